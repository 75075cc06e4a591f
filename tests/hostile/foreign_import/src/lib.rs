//! A plugin that also imports `wasi:sockets/instance-network` (a stand-in declaration): the host must
//! refuse to load it, naming the import.

use wmtp_sdk::*;

mod net {
    wit_bindgen::generate!({
        inline: r#"
            package wasi:sockets@0.2.0;
            interface instance-network {
                instance-network: func() -> u32;
            }
            world net {
                import instance-network;
            }
        "#,
        world: "net",
        type_section_suffix: "net",
    });
}

/// The pipeline that wants the network.
#[derive(Default)]
pub struct Networked;

impl Pipeline for Networked {
    type Settings = NoSettings;

    fn manifest() -> Manifest {
        ManifestBuilder::new("networked", "0.1.0")
            .describe("wants a socket")
            .trains(&[ParamGroup::Lora])
            .build()
    }

    fn weigh(&mut self, batch: &Batch, _train: bool) -> Result<Coefficients, String> {
        let handle = net::wasi::sockets::instance_network::instance_network();
        let v = BatchView::new(batch)?;
        let (ce, loss) = weighted_ce(&v, |_, _, _| 1.0);
        Ok(Coefficients {
            ce,
            values: None,
            loss: loss + handle as f64 * 0.0,
            metrics: vec![],
        })
    }
}

export_pipeline!(Networked);
