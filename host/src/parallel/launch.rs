//! Multi-process jobs: where this process sits in one ([`RankEnv`], read from the environment that
//! `wmtp launch`, torchrun or Slurm set) and the launcher itself ([`launch`]): N copies of a `wmtp`
//! command on this node with torchrun's variables, rank 0 on our terminal and the others' output
//! prefixed by rank, and the first rank
//! that fails stopping the others; Ctrl-C is passed on to every rank.

use super::tcp::TcpComm;
use super::Communicator;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Port rank 0 listens on when MASTER_PORT is not set (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// How long the rendezvous and each collective wait for the other ranks unless WMTP_DIST_TIMEOUT_S says
/// otherwise (rank 0 writing a checkpoint keeps the others waiting in the next collective).
pub const DEFAULT_TIMEOUT_S: f64 = 600.0;

/// This process's place in a distributed job.
#[derive(Debug, Clone, PartialEq)]
pub struct RankEnv {
    /// Global rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Rank on this node (picks the GPU: cuda:LOCAL_RANK).
    pub local_rank: usize,
    /// Where rank 0 listens: MASTER_ADDR:MASTER_PORT.
    pub master: String,
    /// Rendezvous and collective timeout.
    pub timeout: Duration,
}

fn var(get: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<Option<usize>> {
    match get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("environment variable {key}=`{v}` is not a number")),
    }
}

impl RankEnv {
    /// From the process environment: torchrun's RANK, WORLD_SIZE, LOCAL_RANK, or else Slurm's
    /// SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR (default 127.0.0.1 when every rank is
    /// on this node, required otherwise) and MASTER_PORT (default 29500); WMTP_DIST_TIMEOUT_S. None
    /// when neither set of variables is present (a plain single-process run).
    pub fn from_env() -> Result<Option<Self>> {
        Self::from_vars(&|k| std::env::var(k).ok())
    }

    /// [`RankEnv::from_env`] over any variable lookup (tests).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let (rank, world, local) = match (var(get, "RANK")?, var(get, "WORLD_SIZE")?) {
            (Some(r), Some(w)) => (r, w, var(get, "LOCAL_RANK")?),
            (None, None) => match (var(get, "SLURM_PROCID")?, var(get, "SLURM_NTASKS")?) {
                (Some(r), Some(w)) => (r, w, var(get, "SLURM_LOCALID")?),
                _ => return Ok(None),
            },
            _ => bail!("RANK and WORLD_SIZE must be set together"),
        };
        if world == 0 || rank >= world {
            bail!("rank {rank} outside a world of {world} (RANK / WORLD_SIZE)");
        }
        let local_rank = local.unwrap_or(rank);
        let addr = match get("MASTER_ADDR") {
            Some(a) if !a.trim().is_empty() => a.trim().to_string(),
            _ if local_rank == rank => "127.0.0.1".to_string(),
            _ => bail!(
                "MASTER_ADDR is not set: the address of rank 0's node is needed on every node"
            ),
        };
        let port = match get("MASTER_PORT") {
            None => DEFAULT_MASTER_PORT,
            Some(p) => p
                .trim()
                .parse()
                .with_context(|| format!("MASTER_PORT=`{p}` is not a port number"))?,
        };
        let timeout = match get("WMTP_DIST_TIMEOUT_S") {
            None => DEFAULT_TIMEOUT_S,
            Some(t) => t
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|t| *t > 0.0 && t.is_finite())
                .with_context(|| {
                    format!("WMTP_DIST_TIMEOUT_S=`{t}` is not a positive number of seconds")
                })?,
        };
        Ok(Some(RankEnv {
            rank,
            world_size: world,
            local_rank,
            master: format!("{addr}:{port}"),
            timeout: Duration::from_secs_f64(timeout),
        }))
    }

    /// Joins the job's process group (the rendezvous at [`RankEnv::master`]) for tensors on `device`:
    /// NCCL on a CUDA device in builds with the `nccl` feature (the TCP group only hands out NCCL's
    /// id), else TCP through rank 0 ([`TcpComm`]).
    pub fn connect(&self, device: &candle_core::Device) -> Result<Arc<dyn Communicator>> {
        let c = TcpComm::connect(self.rank, self.world_size, &self.master, self.timeout)
            .with_context(|| {
                format!(
                    "joining the process group at {} as rank {} of {}",
                    self.master, self.rank, self.world_size
                )
            })?;
        #[cfg(feature = "nccl")]
        if device.is_cuda() {
            let n = super::nccl::NcclComm::connect(&c, device)
                .with_context(|| format!("rank {}: NCCL initialisation", self.rank))?;
            return Ok(Arc::new(n));
        }
        if device.is_cuda() {
            tracing::warn!(
                "this build has no NCCL (cargo feature `nccl`): the ranks' collectives go over TCP through rank 0, slowly"
            );
        }
        Ok(Arc::new(c))
    }
}

/// What `wmtp launch` starts.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Processes on this node.
    pub nproc_per_node: usize,
    /// Nodes in the job.
    pub nnodes: usize,
    /// This node's index.
    pub node_rank: usize,
    /// Address of node 0 (where rank 0 listens).
    pub master_addr: String,
    /// Port rank 0 listens on.
    pub master_port: u16,
    /// Rendezvous and collective timeout.
    pub timeout: Duration,
    /// The program each process runs (normally this `wmtp` executable).
    pub program: std::path::PathBuf,
    /// Its arguments (`run …`).
    pub args: Vec<String>,
}

/// Copies a child's output into ours line by line, each line prefixed with `[rank R]`.
fn relay(
    rank: usize,
    from: impl std::io::Read + Send + 'static,
    to_stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if to_stderr {
                let _ = writeln!(std::io::stderr().lock(), "[rank {rank}] {line}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "[rank {rank}] {line}");
            }
        }
    })
}

/// Kills a rank and everything in its process group, and reaps it.
fn stop(c: &mut Child) {
    #[cfg(unix)]
    // SAFETY: kill(2) with a negative pid signals the process group the child leads (set at spawn);
    // it touches no memory of ours.
    unsafe {
        libc::kill(-(c.id() as i32), libc::SIGKILL);
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Starts this node's ranks and waits for them. The first rank that exits with a failure stops the
/// others (killed) and the error names it; Ok when every rank exits with success.
pub fn launch(spec: &LaunchSpec) -> Result<()> {
    if spec.nproc_per_node == 0 || spec.nnodes == 0 || spec.node_rank >= spec.nnodes {
        bail!(
            "--nproc-per-node {} --nnodes {} --node-rank {}: need at least one process, one node, and a node rank below the node count",
            spec.nproc_per_node,
            spec.nnodes,
            spec.node_rank
        );
    }
    let mut children: Vec<(usize, Child)> = Vec::new();
    let mut relays = Vec::new();
    for local in 0..spec.nproc_per_node {
        let rank = spec.node_rank * spec.nproc_per_node + local;
        let mut child = match rank_command(spec, local).spawn() {
            Ok(c) => c,
            Err(e) => {
                for (_, c) in &mut children {
                    stop(c);
                }
                bail!("starting rank {rank} ({}): {e}", spec.program.display());
            }
        };
        if let Some(out) = child.stdout.take() {
            relays.push(relay(rank, out, false));
        }
        if let Some(err) = child.stderr.take() {
            relays.push(relay(rank, err, true));
        }
        children.push((rank, child));
    }
    let failure = supervise(children);
    for r in relays {
        let _ = r.join();
    }
    match failure {
        Some(why) => bail!("{why}; the other ranks of this node were stopped"),
        None => Ok(()),
    }
}

/// The command of this node's local rank `local`: the program with torchrun's environment (RANK,
/// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and the collective timeout; rank
/// 0 talks to the terminal directly (its progress bar and summary, as a single run's), the others'
/// output is piped to be prefixed with their rank; each rank leads its own process group, so stopping
/// it stops whatever it started.
fn rank_command(spec: &LaunchSpec, local: usize) -> Command {
    let world = spec.nproc_per_node * spec.nnodes;
    let rank = spec.node_rank * spec.nproc_per_node + local;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", local.to_string())
        .env("LOCAL_WORLD_SIZE", spec.nproc_per_node.to_string())
        .env("MASTER_ADDR", &spec.master_addr)
        .env("MASTER_PORT", spec.master_port.to_string())
        .env(
            "WMTP_DIST_TIMEOUT_S",
            spec.timeout.as_secs_f64().to_string(),
        );
    if rank != 0 {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Waits for every rank; passes a Ctrl-C on to them (the ranks lead their own process groups, so the
/// terminal's reaches only us; each rank then saves a checkpoint with the others and exits, as a single
/// `wmtp run` does); at the first failure stops the rest. Returns what failed, if anything.
fn supervise(children: Vec<(usize, Child)>) -> Option<String> {
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    }
    let mut forwarded = false;
    let mut failure: Option<String> = None;
    let mut running = children;
    while !running.is_empty() {
        if !forwarded && interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            forwarded = true;
            for (_, c) in &running {
                #[cfg(unix)]
                // SAFETY: kill(2) on the process group the child leads; no memory is touched.
                unsafe {
                    libc::kill(-(c.id() as i32), libc::SIGINT);
                }
            }
        }
        let mut still = Vec::new();
        for (rank, mut c) in running {
            match c.try_wait() {
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    failure.get_or_insert_with(|| format!("rank {rank} failed ({status})"));
                }
                Ok(None) => still.push((rank, c)),
                Err(e) => {
                    failure
                        .get_or_insert_with(|| format!("rank {rank}: waiting for it failed: {e}"));
                    still.push((rank, c));
                }
            }
        }
        if failure.is_some() {
            for (_, c) in &mut still {
                stop(c);
            }
            break;
        }
        running = still;
        std::thread::sleep(Duration::from_millis(50));
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<RankEnv>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RankEnv::from_vars(&|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_and_slurm_variables_are_read() -> Result<()> {
        assert_eq!(env(&[])?, None);
        let t = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "1234"),
        ])?
        .expect("torchrun");
        assert_eq!((t.rank, t.world_size, t.local_rank), (3, 8, 1));
        assert_eq!(t.master, "10.0.0.2:1234");
        let s = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "6"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "n0"),
        ])?
        .expect("slurm");
        assert_eq!((s.rank, s.world_size, s.local_rank), (5, 6, 1));
        assert_eq!(s.master, format!("n0:{DEFAULT_MASTER_PORT}"));
        Ok(())
    }

    #[test]
    fn inconsistent_variables_are_named() {
        for (vars, needle) in [
            (vec![("RANK", "0")], "RANK and WORLD_SIZE"),
            (
                vec![("RANK", "4"), ("WORLD_SIZE", "4")],
                "outside a world of 4",
            ),
            (vec![("RANK", "x"), ("WORLD_SIZE", "4")], "RANK=`x`"),
            (
                vec![("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")],
                "MASTER_ADDR",
            ),
            (
                vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "http")],
                "MASTER_PORT",
            ),
        ] {
            let e = env(&vars).expect_err(needle).to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
    }

    fn sh(script: &str, n: usize) -> LaunchSpec {
        LaunchSpec {
            nproc_per_node: n,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29999,
            timeout: Duration::from_secs(5),
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    #[test]
    fn every_rank_gets_the_torchrun_variables() -> Result<()> {
        launch(&sh(
            r#"test "$WORLD_SIZE" = 3 && test "$LOCAL_RANK" = "$RANK" && test "$MASTER_PORT" = 29999 && test "$MASTER_ADDR" = 127.0.0.1"#,
            3,
        ))
    }

    #[test]
    fn a_rank_that_fails_stops_the_others_and_is_named() {
        let t0 = std::time::Instant::now();
        let e = launch(&sh(r#"if [ "$RANK" = 1 ]; then exit 3; fi; sleep 60"#, 3))
            .expect_err("rank 1 fails")
            .to_string();
        assert!(e.contains("rank 1 failed") && e.contains('3'), "{e}");
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the others were not stopped"
        );
    }
}
