//! A naive f64 implementation of the Mixtral forward pass, written for these tests from the
//! architecture's definition: plain loops over vectors, no shared code with the crate.

use std::collections::BTreeMap;

use blyan_chain::spec::ModelSpec;

pub(crate) struct Reference<'a> {
    spec: &'a ModelSpec,
    w: BTreeMap<String, Vec<f64>>,
}

/// Logits at every position, and per layer and position the experts chosen (best first).
pub(crate) struct Output {
    pub(crate) logits: Vec<Vec<f64>>,
    pub(crate) routes: Vec<Vec<Vec<usize>>>,
    /// Per layer and position: the gap between the k-th and (k+1)-th router logits.
    pub(crate) route_margins: Vec<Vec<f64>>,
}

impl<'a> Reference<'a> {
    pub(crate) fn new(spec: &'a ModelSpec, weights: &BTreeMap<String, Vec<f32>>) -> Self {
        let w = weights
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|&x| f64::from(x)).collect()))
            .collect();
        Reference { spec, w }
    }

    fn t(&self, name: &str) -> &[f64] {
        &self.w[name]
    }

    /// `W x` for `W` of shape `[rows, x.len()]`.
    fn matvec(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let w = self.t(name);
        w.chunks(x.len())
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn rms_norm(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let eps = f64::from(self.spec.rms_norm_eps);
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let scale = 1.0 / (ms + eps).sqrt();
        x.iter()
            .zip(self.t(name))
            .map(|(v, g)| v * scale * g)
            .collect()
    }

    /// Rotates each head of `x` (heads of `hd` values) by position `pos`, pairing element
    /// i with element i + hd/2.
    fn rope(&self, x: &mut [f64], pos: usize) {
        let hd = self.spec.head_dim() as usize;
        let theta = f64::from(self.spec.rope_theta);
        for head in x.chunks_mut(hd) {
            for i in 0..hd / 2 {
                let angle = pos as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
                let (s, c) = angle.sin_cos();
                let (a, b) = (head[i], head[i + hd / 2]);
                head[i] = a * c - b * s;
                head[i + hd / 2] = b * c + a * s;
            }
        }
    }

    pub(crate) fn forward(&self, tokens: &[u32]) -> Output {
        let s = self.spec;
        let d = s.hidden_size as usize;
        let hd = s.head_dim() as usize;
        let heads = usize::from(s.num_attention_heads);
        let group = heads / usize::from(s.num_key_value_heads);
        let k_top = usize::from(s.num_experts_per_tok);
        let embed = self.t("model.embed_tokens.weight");
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| embed[t as usize * d..(t as usize + 1) * d].to_vec())
            .collect();
        let mut routes = Vec::new();
        let mut margins = Vec::new();
        for l in 0..usize::from(s.num_hidden_layers) {
            let p = format!("model.layers.{l}");
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, x) in xs.iter().enumerate() {
                let h = self.rms_norm(&format!("{p}.input_layernorm.weight"), x);
                let mut q = self.matvec(&format!("{p}.self_attn.q_proj.weight"), &h);
                let mut k = self.matvec(&format!("{p}.self_attn.k_proj.weight"), &h);
                self.rope(&mut q, pos);
                self.rope(&mut k, pos);
                qs.push(q);
                ks.push(k);
                vs.push(self.matvec(&format!("{p}.self_attn.v_proj.weight"), &h));
            }
            let mut layer_routes = Vec::new();
            let mut layer_margins = Vec::new();
            for pos in 0..xs.len() {
                let mut attn = vec![0.0; d];
                for head in 0..heads {
                    let kv = head / group;
                    let q = &qs[pos][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|j| {
                            let k = &ks[j][kv * hd..(kv + 1) * hd];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let exp: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = exp.iter().sum();
                    for (j, e) in exp.iter().enumerate() {
                        for i in 0..hd {
                            attn[head * hd + i] += e / sum * vs[j][kv * hd + i];
                        }
                    }
                }
                let o = self.matvec(&format!("{p}.self_attn.o_proj.weight"), &attn);
                for (x, o) in xs[pos].iter_mut().zip(o) {
                    *x += o;
                }
                let h = self.rms_norm(&format!("{p}.post_attention_layernorm.weight"), &xs[pos]);
                let router = self.matvec(&format!("{p}.block_sparse_moe.gate.weight"), &h);
                let max = router.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let probs: Vec<f64> = router.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = probs.iter().sum();
                let probs: Vec<f64> = probs.iter().map(|x| x / total).collect();
                let mut order: Vec<usize> = (0..probs.len()).collect();
                order.sort_by(|&a, &b| probs[b].partial_cmp(&probs[a]).unwrap());
                let chosen = &order[..k_top];
                layer_margins.push(order.get(k_top).map_or(f64::INFINITY, |&next| {
                    router[chosen[k_top - 1]] - router[next]
                }));
                let norm: f64 = chosen.iter().map(|&e| probs[e]).sum();
                for &e in chosen {
                    let ep = format!("{p}.block_sparse_moe.experts.{e}");
                    let a = self.matvec(&format!("{ep}.w1.weight"), &h);
                    let b = self.matvec(&format!("{ep}.w3.weight"), &h);
                    let act: Vec<f64> = a
                        .iter()
                        .zip(&b)
                        .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                        .collect();
                    let y = self.matvec(&format!("{ep}.w2.weight"), &act);
                    for (x, y) in xs[pos].iter_mut().zip(y) {
                        *x += probs[e] / norm * y;
                    }
                }
                layer_routes.push(chosen.to_vec());
            }
            routes.push(layer_routes);
            margins.push(layer_margins);
        }
        let logits = xs
            .iter()
            .map(|x| {
                let h = self.rms_norm("model.norm.weight", x);
                self.matvec("lm_head.weight", &h)
            })
            .collect();
        Output {
            logits,
            routes,
            route_margins: margins,
        }
    }
}
