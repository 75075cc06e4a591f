//! A plugin written against wmtp:pipeline@0.0.9: the host must refuse it, naming the version.

wit_bindgen::generate!({ path: "wit", world: "pipeline" });

struct Old;

impl Guest for Old {
    fn describe() -> String {
        "old".into()
    }
    fn weigh(b: wmtp::pipeline::types::Batch) -> Vec<f32> {
        log("weighing");
        vec![1.0; b.ce.len()]
    }
}

export!(Old);
