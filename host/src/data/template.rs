//! The instruction templates (`data.template`, `--template`): how an `{instruction, input}` prompt is
//! written — the model's own chat template, Alpaca, ChatML, or the bare instruction.

use super::Tokenizer;
use anyhow::Result;

/// How an `{instruction, input, output}` row becomes prompt + response (`data.template`); `{text}` rows
/// are trained whole whatever the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// The model's own chat template when it ships one ([`Template::Model`]); else ChatML when the
    /// tokenizer has `<|im_start|>`, else Alpaca.
    #[default]
    Auto,
    /// The model's own chat template (GGUF `tokenizer.chat_template`, HF `tokenizer_config.json`),
    /// rendered as transformers' `apply_chat_template` does ([`super::chat_template`]): the prompt is
    /// the user turn with the generation prompt, the response what the full conversation adds (the
    /// answer and the template's closing tokens); nothing else is added (no extra BOS or EOS).
    Model,
    /// The Alpaca instruction template ([`alpaca_prompt`]).
    Alpaca,
    /// ChatML: `<|im_start|>user\n{instruction}[\n\n{input}]<|im_end|>\n<|im_start|>assistant\n`, the
    /// response closed by `<|im_end|>`.
    Chatml,
    /// The instruction (and input, after a blank line) followed directly by the response.
    None,
}

impl Template {
    /// `Auto` made concrete for tokenizer `tok`; the others unchanged.
    pub fn resolve(self, tok: &Tokenizer) -> Template {
        match self {
            Template::Auto if tok.chat_template_source().is_some() => Template::Model,
            Template::Auto if tok.token_id("<|im_start|>").is_some() => Template::Chatml,
            Template::Auto => Template::Alpaca,
            t => t,
        }
    }

    /// The prompt (everything before the response) of an instruction and its optional input, for
    /// tokenizer `tok` (whose chat template [`Template::Model`] renders). `Auto` must be resolved first;
    /// it is taken as Alpaca.
    pub fn prompt_text(self, tok: &Tokenizer, instruction: &str, input: &str) -> Result<String> {
        match self {
            Template::Model => {
                let t = model_template(tok)?;
                t.render(
                    &[super::chat_template::Message {
                        role: "user",
                        content: &joined(instruction, input),
                    }],
                    true,
                )
            }
            t => Ok(t.prompt(instruction, input)),
        }
    }

    /// [`Template::prompt_text`] of the templates that need no tokenizer (`Model` needs the tokenizer's
    /// template: only `prompt_text` renders it, and it never reaches here).
    pub(crate) fn prompt(self, instruction: &str, input: &str) -> String {
        let joined = joined(instruction, input);
        match self {
            Template::Auto | Template::Alpaca => alpaca_prompt(instruction, input),
            Template::Chatml | Template::Model => {
                format!("<|im_start|>user\n{joined}<|im_end|>\n<|im_start|>assistant\n")
            }
            Template::None => format!("{joined}\n"),
        }
    }

    /// Whether a prompt under this template starts with the tokenizer's BOS: not for ChatML when BOS is
    /// `<|im_start|>` itself (SmolLM2), whose prompt already opens with it.
    pub fn adds_bos(self, tok: &Tokenizer) -> bool {
        self != Template::Model
            && !(self == Template::Chatml
                && tok.bos_id.is_some()
                && tok.bos_id == tok.token_id("<|im_start|>"))
    }

    /// Token ids of the prompt of `instruction` (and `input`): what generation continues.
    pub fn encode_prompt(
        self,
        tok: &Tokenizer,
        instruction: &str,
        input: &str,
    ) -> Result<Vec<u32>> {
        tok.encode(
            &self.prompt_text(tok, instruction, input)?,
            self.adds_bos(tok),
        )
    }

    /// Its name in configs.
    pub fn name(self) -> &'static str {
        match self {
            Template::Auto => "auto",
            Template::Model => "model",
            Template::Alpaca => "alpaca",
            Template::Chatml => "chatml",
            Template::None => "none",
        }
    }
}

impl std::str::FromStr for Template {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Template::Auto),
            "model" => Ok(Template::Model),
            "alpaca" => Ok(Template::Alpaca),
            "chatml" => Ok(Template::Chatml),
            "none" => Ok(Template::None),
            _ => Err(format!(
                "unknown template `{s}` (auto, model, alpaca, chatml, none)"
            )),
        }
    }
}

/// An instruction and its optional input as one user turn (the input after a blank line).
pub(crate) fn joined(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n\n{input}")
    }
}

/// The tokenizer's chat template, or an error saying the model has none.
pub(crate) fn model_template(tok: &Tokenizer) -> Result<&super::chat_template::ChatTemplate> {
    tok.chat_template()?.ok_or_else(|| {
        anyhow::anyhow!(
            "data.template = \"model\": the model ships no chat template (GGUF tokenizer.chat_template, \
             tokenizer_config.json); use auto, chatml, alpaca or none"
        )
    })
}

/// The Alpaca prompt (everything before the response).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    let head = "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
    if input.is_empty() {
        format!("{head}\n\n### Instruction:\n{instruction}\n\n### Response:\n")
    } else {
        format!(
            "{head}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    }
}
