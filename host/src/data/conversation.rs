//! `{messages: [{role, content}, …]}` rows: a conversation rendered with the chat template — the model's
//! own, or ChatML — training every assistant turn and nothing else. (`{prompt, completion}` rows are
//! `prompt_and_response` (dataset.rs) without a template.)

use super::chat_template::{ChatTemplate, Message};
use super::template::Template;
use super::Tokenizer;
use anyhow::{bail, Result};

/// ChatML as a Jinja template, for `{messages}` rows under `data.template = "chatml"`.
const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}\
                      {% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One turn of a `{messages}` row.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Turn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The turn's text.
    pub content: String,
}

/// Ids and mask of a conversation under `template` (resolved): the rendering of the whole conversation,
/// with the tokens of every assistant turn (what the turn adds to the conversation rendered up to the
/// generation prompt before it: its text and the template's closing tokens) trained; nothing appended
/// (the template closes the turns). Each piece is tokenised on its own, so the ids are the pieces' ids
/// in order.
pub fn conversation(
    tok: &Tokenizer,
    turns: &[Turn],
    template: Template,
) -> Result<(Vec<u32>, Vec<u8>)> {
    if !turns.iter().any(|t| t.role == "assistant") {
        bail!("a `messages` row needs at least one assistant turn to train on");
    }
    let t = chat_template(tok, template)?;
    let msgs: Vec<Message> = turns
        .iter()
        .map(|t| Message {
            role: &t.role,
            content: &t.content,
        })
        .collect();
    let (mut ids, mut mask, mut done) = (Vec::new(), Vec::new(), String::new());
    let mut push = |text: &str, trained: bool, first: bool| -> Result<()> {
        let piece = tok.encode(text, first && template.adds_bos(tok))?;
        mask.extend(std::iter::repeat_n(trained as u8, piece.len()));
        ids.extend(piece);
        Ok(())
    };
    for (i, _) in msgs
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == "assistant")
    {
        let before = t.render(&msgs[..i], true)?;
        let upto = t.render(&msgs[..=i], false)?;
        let (Some(context), Some(answer)) = (
            before.strip_prefix(done.as_str()),
            upto.strip_prefix(before.as_str()),
        ) else {
            bail!(
                "the chat template does not render the conversation turn by turn (assistant turn {} \
                 does not extend the text before it), so its answers cannot be told apart",
                i + 1
            );
        };
        push(context, false, done.is_empty())?;
        push(answer, true, false)?;
        done = upto;
    }
    let whole = t.render(&msgs, false)?;
    if let Some(rest) = whole.strip_prefix(done.as_str()).filter(|r| !r.is_empty()) {
        push(rest, false, false)?; // turns after the last answer: context only
    }
    Ok((ids, mask))
}

/// The chat template a `{messages}` row is rendered with (the built-in ChatML one compiled once per
/// process).
fn chat_template(tok: &Tokenizer, template: Template) -> Result<&ChatTemplate> {
    static CHATML_TEMPLATE: std::sync::OnceLock<std::result::Result<ChatTemplate, String>> =
        std::sync::OnceLock::new();
    match template {
        Template::Model => tok.chat_template()?.ok_or_else(|| {
            anyhow::anyhow!("data.template = \"model\": the model ships no chat template")
        }),
        Template::Chatml => CHATML_TEMPLATE
            .get_or_init(|| ChatTemplate::new(CHATML, "", "").map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the built-in ChatML template: {e}")),
        other => bail!(
            "`messages` rows need a chat template: data.template = \"model\" (or auto on a model that \
             ships one) or \"chatml\", not `{}`",
            other.name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trained(tok: &Tokenizer, ids: &[u32], mask: &[u8]) -> String {
        let t: Vec<u32> = ids
            .iter()
            .zip(mask)
            .filter(|(_, &m)| m == 1)
            .map(|(&i, _)| i)
            .collect();
        tok.decode(&t).unwrap()
    }

    /// Every assistant turn is trained (its text and the template's closing), nothing else.
    #[test]
    fn only_the_assistant_turns_are_trained() {
        let tok = Tokenizer::bytes();
        let turns: Vec<Turn> = serde_json::from_str(
            r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]"#,
        )
        .unwrap();
        let (ids, mask) = conversation(&tok, &turns, Template::Chatml).unwrap();
        assert_eq!(trained(&tok, &ids, &mask), "Hello<|im_end|>\n4<|im_end|>\n");
        let text: Vec<u32> = ids[1..].to_vec(); // after BOS
        assert!(tok
            .decode(&text)
            .unwrap()
            .starts_with("<|im_start|>system\nBe brief."));
        let e = format!(
            "{:#}",
            conversation(&tok, &turns[..2], Template::Chatml).unwrap_err()
        );
        assert!(e.contains("at least one assistant turn"), "{e}");
        let e = format!(
            "{:#}",
            conversation(&tok, &turns, Template::Alpaca).unwrap_err()
        );
        assert!(e.contains("need a chat template"), "{e}");
    }
}
