//! Bad input gives an error naming the file and the problem — never a panic.

use crate::common;

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use wmtp_host::formats::load::{load_model, LoadOptions};

fn load_err(path: &Path) -> String {
    let spec = path.to_str().unwrap();
    let r = std::panic::catch_unwind(|| load_model(spec, &LoadOptions::default()));
    match r {
        Err(_) => panic!("loading {spec} panicked"),
        Ok(Ok(_)) => panic!("loading {spec} unexpectedly succeeded"),
        Ok(Err(e)) => format!("{e:#}"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn missing_file_names_it() {
    let err = load_err(Path::new("/nonexistent/model.gguf"));
    assert!(
        err.contains("/nonexistent/model.gguf") && err.contains("no such file"),
        "{err}"
    );
    let dir = common::tempdir();
    std::fs::write(
        dir.path().join("params.json"),
        r#"{"dim": 64, "n_layers": 4, "n_heads": 4, "vocab_size": 97}"#,
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("no consolidated*.pth or *.safetensors"),
        "{err}"
    );
}

#[test]
fn wrong_params_json_names_file_and_key() {
    let dir = common::tempdir();
    copy_dir(&common::fixture("fixtures/tiny_meta"), dir.path());
    let params = dir.path().join("params.json");
    std::fs::write(&params, r#"{"dim": 64, "n_layers": 4, "n_heads": 4, "vocab_size": 97, "n_kv_heads": 2, "multiple_of": 32, "n_future_tokens": 2, "rope_thetaa": 1}"#).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("params.json") && err.contains("rope_thetaa"),
        "{err}"
    );
    // a shape that disagrees with the weights: the first mismatching tensor is named
    std::fs::write(&params, r#"{"dim": 64, "n_layers": 4, "n_heads": 4, "vocab_size": 97, "multiple_of": 32, "n_future_tokens": 2}"#).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("attention.wk.weight") && err.contains("shape"),
        "{err}"
    );
    std::fs::write(&params, "{not json").unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("parsing model params") && err.contains("params.json"),
        "{err}"
    );
}

#[test]
fn truncated_safetensors_names_the_file() {
    let dir = common::tempdir();
    copy_dir(&common::fixture("fixtures/tiny_hf"), dir.path());
    let f = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
    std::fs::write(&f, b"\x08\x00\x00").unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn corrupt_pth_names_the_file() {
    let dir = common::tempdir();
    copy_dir(&common::fixture("fixtures/tiny_meta"), dir.path());
    let f = dir.path().join("consolidated.00.pth");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 3]).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("consolidated.00.pth"), "{err}");
}

#[test]
fn gguf_of_another_architecture_is_rejected() {
    let dir = common::tempdir();
    let path = dir.path().join("gpt2.gguf");
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap(),
        candle_core::quantized::GgmlDType::F32,
    )
    .unwrap();
    let arch = gguf_file::Value::String("gpt2".into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .unwrap();
    drop(f);
    let err = load_err(&path);
    assert!(
        err.contains("gpt2.gguf") && err.contains("architecture is `gpt2`"),
        "{err}"
    );
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let err = load_err(&path);
    assert!(err.contains("gpt2.gguf"), "{err}");
}

#[test]
fn adapter_dir_without_config_is_an_error() {
    let dir = common::tempdir();
    let mut m = wmtp_host::model::Transformer::random(
        wmtp_host::model::ModelArgs::preset("tiny").unwrap(),
        1,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let err = format!(
        "{:#}",
        wmtp_host::formats::adapter::load_adapter(dir.path(), &mut m).unwrap_err()
    );
    assert!(err.contains("adapter_config.json"), "{err}");
}
