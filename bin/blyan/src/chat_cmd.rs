//! `blyan chat`: an interactive terminal chat with a running node, streamed.

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Arguments of `blyan chat`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChatArgs {
    /// The node's address.
    #[arg(long, env = "BLYAN_URL", default_value = "http://127.0.0.1:8420")]
    url: String,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 96)]
    max_tokens: u32,
    /// Softmax temperature, 0 to 2.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Seed of the first reply (each later reply uses the next seed) [default: the node's].
    #[arg(long)]
    seed: Option<u64>,
}

pub(crate) fn run(args: &ChatArgs) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = args.url.trim_end_matches('/');
    let stdin = std::io::stdin();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    if interactive {
        println!("chatting with {base} — /reset forgets the conversation, /quit or Ctrl-D leaves");
    }
    let mut messages: Vec<Value> = Vec::new();
    let mut seed = args.seed;
    let mut out = std::io::stdout();
    loop {
        if interactive {
            print!("> ");
            out.flush()?;
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                messages.clear();
                println!("(conversation forgotten)");
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": line}));
        let mut body = json!({
            "model": "blyan",
            "messages": messages,
            "stream": true,
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
        });
        if let Some(s) = seed {
            body["seed"] = json!(s);
            seed = Some(s.wrapping_add(1));
        }
        let reply = stream_reply(&agent, base, &body, &mut out)?;
        messages.push(json!({"role": "assistant", "content": reply}));
    }
    Ok(())
}

/// Posts one streamed chat request and prints the text as it arrives; returns the reply.
fn stream_reply(
    agent: &ureq::Agent,
    base: &str,
    body: &Value,
    out: &mut impl Write,
) -> anyhow::Result<String> {
    let response = agent
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .with_context(|| format!("connecting to the node at {base}; is `blyan node` running?"))?;
    let status = response.status();
    let reader = BufReader::new(response.into_body().into_reader());
    if !status.is_success() {
        let text: String = reader.lines().map_while(Result::ok).collect();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| {
                Some(format!(
                    "[{}] {}",
                    v["error"]["code"].as_str()?,
                    v["error"]["message"].as_str()?
                ))
            })
            .unwrap_or(text);
        bail!("the node refused the request ({status}): {message}");
    }
    let mut reply = String::new();
    let mut finish = None;
    for line in reader.lines() {
        let line = line.context("reading the stream")?;
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).context("a malformed stream chunk")?;
        if let Some(e) = chunk.get("error") {
            bail!("generation failed: [{}] {}", e["code"], e["message"]);
        }
        let choice = &chunk["choices"][0];
        if let Some(text) = choice["delta"]["content"].as_str() {
            reply.push_str(text);
            write!(out, "{text}")?;
            out.flush()?;
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_owned());
        }
    }
    writeln!(out)?;
    if finish.is_none() {
        bail!("the stream ended before the reply finished");
    }
    Ok(reply)
}
