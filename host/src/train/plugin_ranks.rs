//! Glue between the plugin runtime (wmtp-plugin-host) and the layers below train: the ranks a pipeline
//! plugin's `all-reduce-sum` host call sums over, and the manifest's parameter groups as the model's.

use crate::model::ParamGroup;
use crate::parallel::Communicator;
use candle_core::Tensor;
use std::sync::{Arc, OnceLock};

/// The ranks a plugin's `all-reduce-sum` sums over: none (one rank, the identity) until a communicator
/// is connected, then that communicator's group. The plugin runtime is made before the session is
/// sharded, so the reducer it holds reads this slot at each call.
#[derive(Clone, Default)]
pub struct PluginRanks(Arc<OnceLock<Arc<dyn Communicator>>>);

impl std::fmt::Debug for PluginRanks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.get() {
            Some(c) => write!(f, "PluginRanks({} of {})", c.rank(), c.world_size()),
            None => write!(f, "PluginRanks(single)"),
        }
    }
}

impl PluginRanks {
    /// From now on plugins' sums go over `comm`'s group (once; a second call is refused).
    pub fn connect(&self, comm: Arc<dyn Communicator>) -> anyhow::Result<()> {
        self.0
            .set(comm)
            .map_err(|_| anyhow::anyhow!("the plugin's ranks are already connected"))
    }

    /// The reducer the plugin runtime calls: Σ over ranks in f64 (a CPU tensor through the
    /// communicator), the identity before [`PluginRanks::connect`].
    pub fn reducer(&self) -> wmtp_plugin_host::AllReduce {
        let slot = self.0.clone();
        Arc::new(move |xs: &[f64]| match slot.get() {
            None => Ok(xs.to_vec()),
            Some(c) => Tensor::new(xs, &candle_core::Device::Cpu)
                .and_then(|t| c.all_reduce_sum(&t))
                .and_then(|t| t.to_vec1::<f64>())
                .map_err(|e| e.to_string()),
        })
    }
}

/// A manifest's trained group (`trains`) as the model's parameter group.
impl From<wmtp_plugin_host::ParamGroup> for ParamGroup {
    fn from(g: wmtp_plugin_host::ParamGroup) -> Self {
        use wmtp_plugin_host::ParamGroup as G;
        match g {
            G::Lora => ParamGroup::Lora,
            G::ValueHead => ParamGroup::ValueHead,
            G::Heads => ParamGroup::Heads,
            G::Trunk => ParamGroup::Trunk,
        }
    }
}
