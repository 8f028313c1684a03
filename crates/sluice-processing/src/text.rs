//! Text models: tokenize per item, pool token states into a sentence embedding.
//!
//! Tokenization runs before batching so the batcher knows each item's length
//! and can group similar lengths. The tokenizer's own padding (MiniLM's
//! `tokenizer.json` pads every input to 128) is switched off: the runtime pads
//! each batch only to its longest item.

use std::path::Path;

use sluice_core::spec::{ModelSpec, Pooling, TextSpec};
use sluice_core::{Input, ItemError, ModelSignature, NamedTensors, Output, Tensor, TensorData};
use tokenizers::{Tokenizer, TruncationParams};

use crate::{Meta, Prepared, ProcessingError, Processor};

/// Tokenizer-based processing with sentence pooling.
pub struct TextProcessor {
    tokenizer: Tokenizer,
    spec: TextSpec,
    hidden_output: String,
    with_type_ids: bool,
}

impl TextProcessor {
    /// Loads the tokenizer and checks the configured names against the graph.
    pub fn new(
        spec: &TextSpec,
        model: &ModelSpec,
        signature: &ModelSignature,
    ) -> Result<TextProcessor, ProcessingError> {
        let path = model.resolve(&spec.tokenizer);
        let tokenizer = load_tokenizer(&path, spec.max_length)?;
        for name in [&spec.input_ids, &spec.attention_mask] {
            if signature.input(name).is_none() {
                return Err(ProcessingError::Config(format!(
                    "text processing feeds input '{name}' but the model's inputs are {}",
                    names(&signature.inputs)
                )));
            }
        }
        let with_type_ids = spec
            .token_type_ids
            .as_ref()
            .is_some_and(|n| signature.input(n).is_some());
        if !signature.outputs.iter().any(|o| o.name == spec.output) {
            return Err(ProcessingError::Config(format!(
                "text processing reads output '{}' but the model's outputs are {}",
                spec.output,
                names(&signature.outputs)
            )));
        }
        Ok(TextProcessor {
            tokenizer,
            spec: spec.clone(),
            hidden_output: spec.output.clone(),
            with_type_ids,
        })
    }
}

fn names(infos: &[sluice_core::TensorInfo]) -> String {
    let v: Vec<&str> = infos.iter().map(|t| t.name.as_str()).collect();
    format!("[{}]", v.join(", "))
}

/// Loads `tokenizer.json` with padding off and truncation at `max_length`.
pub fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer, ProcessingError> {
    let err = |message: String| ProcessingError::File {
        path: path.display().to_string(),
        message,
    };
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length,
            ..TruncationParams::default()
        }))
        .map_err(|e| err(e.to_string()))?;
    Ok(tokenizer)
}

fn ids_tensor(v: &[u32]) -> Tensor {
    Tensor {
        shape: vec![v.len()],
        data: TensorData::I64(v.iter().map(|&x| i64::from(x)).collect()),
    }
}

impl Processor for TextProcessor {
    fn preprocess(&self, input: Input) -> Result<Prepared, ItemError> {
        let text = match input {
            Input::Text(t) => t,
            other => {
                return Err(ItemError::invalid(format!(
                    "this model takes text, got {}",
                    other.kind()
                )))
            }
        };
        if text.trim().is_empty() {
            return Err(ItemError::invalid("empty text"));
        }
        let enc = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| ItemError::invalid(format!("cannot tokenize: {e}")))?;
        let tokens = enc.get_ids().len();
        let mut tensors = NamedTensors::new();
        tensors.insert(self.spec.input_ids.clone(), ids_tensor(enc.get_ids()));
        tensors.insert(self.spec.attention_mask.clone(), ids_tensor(enc.get_attention_mask()));
        if self.with_type_ids {
            if let Some(name) = &self.spec.token_type_ids {
                tensors.insert(name.clone(), ids_tensor(enc.get_type_ids()));
            }
        }
        Ok(Prepared {
            tensors,
            len: tokens,
            meta: Meta::Text { tokens },
        })
    }

    fn postprocess(&self, mut outputs: NamedTensors, meta: &Meta) -> Result<Output, ItemError> {
        let tokens = match meta {
            Meta::Text { tokens } => *tokens,
            _ => {
                return Err(ItemError::new(
                    sluice_core::ItemErrorKind::Internal,
                    "text item without token count",
                ))
            }
        };
        let hidden = outputs
            .remove(&self.hidden_output)
            .ok_or_else(|| ItemError::inference(format!("model returned no '{}' output", self.hidden_output)))?;
        let TensorData::F32(data) = &hidden.data else {
            return Err(ItemError::inference(format!(
                "output '{}' must be float32, got {}",
                self.hidden_output,
                hidden.dtype()
            )));
        };
        // Per item: [seq, hidden]; seq may exceed `tokens` because of batch padding.
        let [seq, dim] = hidden.shape[..] else {
            return Err(ItemError::inference(format!(
                "output '{}' must be [batch, sequence, hidden], got per-item shape {:?}",
                self.hidden_output, hidden.shape
            )));
        };
        if tokens == 0 || tokens > seq {
            return Err(ItemError::inference(format!(
                "item has {tokens} tokens but the output covers {seq}"
            )));
        }
        let mut pooled = match self.spec.pooling {
            Pooling::Cls => data[..dim].to_vec(),
            Pooling::Mean => {
                let mut acc = vec![0f32; dim];
                for row in data[..tokens * dim].chunks_exact(dim) {
                    for (a, x) in acc.iter_mut().zip(row) {
                        *a += x;
                    }
                }
                let n = tokens as f32;
                acc.iter_mut().for_each(|a| *a /= n);
                acc
            }
        };
        if self.spec.normalize {
            let norm = pooled.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            pooled.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(Output::Embedding(pooled))
    }
}
