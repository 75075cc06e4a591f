//! The model's own chat template (GGUF `tokenizer.chat_template`, HF `tokenizer_config.json`'s
//! `chat_template`): a Jinja template rendered with minijinja (Python string methods through
//! minijinja-contrib's pycompat, as Hugging Face templates use them), with the variables transformers'
//! `apply_chat_template` passes: `messages`, `add_generation_prompt`, `bos_token`, `eos_token` and a
//! `raise_exception` function.

use anyhow::{anyhow, bail, Context, Result};
use minijinja::{context, Environment, Error, ErrorKind};

/// A chat template, compiled once, and the special tokens it may name.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token` as the template sees it ("" when the tokenizer has none).
    pub bos_token: String,
    /// `eos_token` as the template sees it.
    pub eos_token: String,
}

/// One turn of a conversation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message<'a> {
    /// `system`, `user` or `assistant`.
    pub role: &'a str,
    /// The turn's text.
    pub content: &'a str,
}

impl ChatTemplate {
    /// Compiles the Jinja `source` (an error when it does not parse).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .context("the model's chat template does not parse")?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Renders `messages`, with the assistant's opening appended when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.env
            .get_template("chat")?
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| anyhow!("rendering the model's chat template: {e:#}"))
    }

    /// (prompt, response) of a one-turn exchange: the prompt is the user turn rendered with the
    /// generation prompt; the response is what the full conversation adds after it (the answer and the
    /// template's closing tokens). An error when the conversation does not start with the prompt.
    pub fn split(&self, user: &str, answer: &str) -> Result<(String, String)> {
        let turn = [Message {
            role: "user",
            content: user,
        }];
        let prompt = self.render(&turn, true)?;
        let full = self.render(
            &[
                turn[0].clone(),
                Message {
                    role: "assistant",
                    content: answer,
                },
            ],
            false,
        )?;
        let Some(response) = full.strip_prefix(&prompt) else {
            bail!(
                "the model's chat template renders the conversation without the prompt as its start, so \
                 the answer cannot be told apart (use data.template = \"chatml\", \"alpaca\" or \"none\")"
            );
        };
        Ok((prompt, response.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template (as its GGUF carries it): the default system turn is added, the
    /// answer is closed by `<|im_end|>\n`.
    #[test]
    fn smollm2_template_splits_prompt_and_answer() {
        let t = ChatTemplate::new(
            "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
             {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}\
             {% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}\
             {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
            "<|im_start|>",
            "<|im_end|>",
        )
        .unwrap();
        let (p, r) = t.split("Add 2 and 3.", "5").unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nAdd 2 and 3.<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(r, "5<|im_end|>\n");
        let bad =
            ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let e = format!("{:#}", bad.split("x", "y").unwrap_err());
        assert!(e.contains("roles must alternate"), "{e}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
