//! Helpers shared by the test binaries that run `blyan` processes.

// Each test binary uses its own part of these helpers.
#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;

/// A `blyan` process serving on a loopback port, and what it printed.
pub struct RunningNode {
    pub child: Child,
    pub url: String,
    pub lines: mpsc::Receiver<String>,
}

impl RunningNode {
    /// Starts `blyan --data-dir DIR <args> --listen 127.0.0.1:0` and waits until it listens.
    /// Its stderr goes to `DIR/node-stderr.log` (a pipe nobody reads
    /// would fill and stall the node).
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> RunningNode {
        let log = Self::stderr_log(dir);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_blyan"))
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        loop {
            let Ok(line) = lines.recv_timeout(Duration::from_secs(120)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the node never listened: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            };
            if let Some(url) = line.strip_prefix("web UI") {
                let url = url.trim().trim_end_matches('/').to_owned();
                return RunningNode { child, url, lines };
            }
        }
    }

    /// Where the node started on `dir` writes its stderr.
    pub fn stderr_log(dir: &Path) -> std::path::PathBuf {
        dir.join("node-stderr.log")
    }

    pub fn get(&self, path: &str) -> Value {
        ureq::get(format!("{}{path}", self.url))
            .call()
            .unwrap()
            .into_body()
            .read_json()
            .unwrap()
    }

    /// Sends SIGTERM and returns whether it exited successfully, and what it printed after.
    pub fn terminate(mut self) -> (bool, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        let rest: Vec<String> = self.lines.try_iter().collect();
        (exit.success(), rest.join("\n"))
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn init_random(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_blyan"))
        .arg("--data-dir")
        .arg(dir)
        .args(["init", "--random-weights"])
        .output()
        .unwrap();
    assert!(out.status.success());
}
