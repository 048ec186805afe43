//! Experts computed on other machines.
//!
//! In the int8 forward pass an expert reads its tokens' inputs quantized (Q8_0 rows) and
//! gives `[rows, d]` f32 outputs; every output row depends only on its input row and the
//! expert's weights, computed by the same kernels in the same order wherever they run. So a
//! host that computes an expert's rows with [`Model::compute_expert`] returns exactly the
//! bits this process would have computed, and a generation spread over machines equals the
//! one made on a single machine.
//!
//! [`ExpertHosts`] is what the model asks: which experts it computes itself, and the answers
//! of other machines for the rest (all of a layer's calls at once, so that they run in
//! parallel). A call no host answers is computed here, from the expert's block, fetched by
//! hash from another machine first if the local copy cannot be read.

use std::sync::Arc;

use blyan_primitives::{Address, ExpertId, Hash};

use crate::{
    ModelError,
    kernels::{QK, QuantRows},
};

/// Bytes of one quantized block on the wire: its f32 scale and 32 signed quants.
const BLOCK_BYTES: usize = 4 + QK;

/// The inputs of one expert's tokens in one step, quantized as the expert reads them.
#[derive(Clone, Debug, Default)]
pub struct ExpertRows {
    pub(crate) q: QuantRows,
}

impl ExpertRows {
    /// How many rows.
    pub fn rows(&self) -> usize {
        self.q.rows()
    }

    /// Their width.
    pub fn cols(&self) -> usize {
        self.q.cols()
    }

    /// The wire form: rows and cols (u32 LE), then per block its scale (f32 LE) and its 32
    /// quants.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len());
        self.write_to(&mut out);
        out
    }

    /// The length of the wire form.
    pub fn wire_len(&self) -> usize {
        8 + self.q.block_count() * BLOCK_BYTES
    }

    /// Appends the wire form ([`ExpertRows::to_bytes`]) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.wire_len());
        out.extend_from_slice(&(self.rows() as u32).to_le_bytes());
        out.extend_from_slice(&(self.cols() as u32).to_le_bytes());
        for b in 0..self.q.block_count() {
            let (scale, quants) = self.q.block(b);
            out.extend_from_slice(&scale.to_le_bytes());
            out.extend(quants.iter().map(|&v| v as u8));
        }
    }

    /// Reads the wire form of rows `cols` wide, at most `rows_max` of them; anything else
    /// (another width, a short or long buffer, a scale that is not finite and non-negative)
    /// is refused.
    pub fn from_bytes(
        bytes: &[u8],
        cols: usize,
        rows_max: usize,
    ) -> Result<ExpertRows, ModelError> {
        let bad = |reason: String| ModelError::InvalidParameter {
            name: "rows",
            reason,
        };
        let word = |at: usize| -> Result<usize, ModelError> {
            let b: [u8; 4] = bytes
                .get(at..at + 4)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| bad("shorter than its header".into()))?;
            Ok(u32::from_le_bytes(b) as usize)
        };
        let (rows, width) = (word(0)?, word(4)?);
        if width != cols || cols == 0 || !cols.is_multiple_of(QK) {
            return Err(bad(format!(
                "rows are {width} wide, this model's are {cols}"
            )));
        }
        if rows == 0 || rows > rows_max {
            return Err(bad(format!("{rows} rows; 1 to {rows_max} are taken")));
        }
        let blocks = rows * (cols / QK);
        if bytes.len() != 8 + blocks * BLOCK_BYTES {
            return Err(bad(format!(
                "{} bytes for {rows} rows of {cols}: expected {}",
                bytes.len(),
                8 + blocks * BLOCK_BYTES
            )));
        }
        let mut q = QuantRows::default();
        q.clear(cols);
        for chunk in bytes[8..].chunks_exact(BLOCK_BYTES) {
            let scale = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if !scale.is_finite() || scale < 0.0 {
                return Err(bad(format!("a block's scale is {scale}")));
            }
            let mut quants = [0i8; QK];
            for (v, &b) in quants.iter_mut().zip(&chunk[4..]) {
                *v = b as i8;
            }
            q.push_block(scale, quants);
        }
        q.finish_rows(rows);
        Ok(ExpertRows { q })
    }
}

/// One expert's rows of one step, to compute elsewhere.
#[derive(Clone, Debug)]
pub struct RemoteCall {
    /// The expert.
    pub expert: ExpertId,
    /// The exact version: its block.
    pub block: Hash,
    /// Its tokens' inputs.
    pub rows: ExpertRows,
}

/// A host's answer to one call.
#[derive(Clone, Debug)]
pub struct RemoteAnswer {
    /// The outputs, `[rows, d]` row-major.
    pub output: Vec<f32>,
    /// Who answered (for reports and bans).
    pub host: String,
    /// The account that signed the answer: who is paid for it.
    pub account: Address,
    /// Whether the model should recompute this call itself and compare (a spot check).
    pub check: bool,
    /// What makes the answer attributable: the host's signed statement of it, kept as
    /// evidence if the spot check finds it wrong (empty unless `check`: only a checked
    /// answer can be found wrong).
    pub evidence: String,
}

/// What became of one call.
#[derive(Clone, Debug, Default)]
pub struct RemoteOutcome {
    /// The answer used, if a host gave one.
    pub answer: Option<RemoteAnswer>,
    /// Every host the call's rows were sent to (a hedged call goes to two).
    pub sent_to: Vec<String>,
}

/// Who computes the experts this process does not.
pub trait ExpertHosts: Send + Sync + std::fmt::Debug {
    /// Whether this process computes `expert` itself.
    fn computes_locally(&self, expert: ExpertId) -> bool;

    /// The outcomes of `calls`, computed elsewhere, in order: the answer, `None` where no
    /// host answered in time (the model then computes it itself), and every host that was
    /// sent the call's rows. Called once per layer with all of the layer's remote experts,
    /// so that they run in parallel; shared, so that threads making the calls need no copy
    /// of the rows.
    fn compute(&self, calls: &Arc<[RemoteCall]>) -> Vec<RemoteOutcome>;

    /// A spot check found `answer` to `call` different from this process's own `local`
    /// outputs: the host lied or is broken.
    fn mismatch(&self, call: &RemoteCall, answer: &RemoteAnswer, local: &[f32]);

    /// This process could not read expert block `block` and no host computed it: fetch the
    /// block's payload by hash from another machine and repair the local copy. Whether it
    /// was repaired.
    fn fetch_block(&self, block: &Hash) -> bool;
}
