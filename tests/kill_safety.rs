//! Checkpoints survive `kill -9`: `wmtp run` (checkpoint every step) is killed with SIGKILL again and
//! again — half the time at a random moment, half the time just after a save has started (a
//! `.step-N.tmp` folder appeared) — and after every kill the latest complete checkpoint loads, and the
//! next round resumes from the run folder (cleaning up what the kill left). The figures are printed
//! (`cargo test -p wmtp-host --test host kill_safety:: -- --nocapture`).

use crate::common;

use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wmtp_host::checkpoint;

const ROUNDS: usize = 24;

fn start(run_dir: &Path, resume: bool) -> Child {
    let plugin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/baseline.wasm");
    let mut c = Command::new(env!("CARGO_BIN_EXE_wmtp"));
    c.arg("run");
    if resume {
        c.arg("--resume").arg(run_dir);
    } else {
        c.arg("--pipeline").arg(plugin);
        for s in [
            format!("checkpoint.dir={}", run_dir.display()),
            "checkpoint.every=1".into(),
            "training.steps=100000".into(),
            "training.batch_size=2".into(),
            "runtime.eval_every=0".into(),
        ] {
            c.arg("--set").arg(s);
        }
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Whether a save is in progress or was cut short (a `.NAME.tmp` or `.NAME.old` folder exists).
fn leftovers(run_dir: &Path) -> Vec<String> {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until a save has started (a `.step-*.tmp` folder exists) or `limit` passes.
fn wait_for_a_save(run_dir: &Path, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if leftovers(run_dir).iter().any(|n| n.ends_with(".tmp")) {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

#[test]
fn the_latest_checkpoint_always_loads_after_kill_9() {
    let dir = common::tempdir();
    let run_dir = dir.path().join("run");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let (mut during_save, mut checked, mut steps_seen) = (0, 0, Vec::new());
    for round in 0..ROUNDS {
        let resume = checkpoint::latest(&run_dir).is_some();
        let mut child = start(&run_dir, resume);
        // let it get going (load, compile, a few steps), then kill at a random or a save-aligned moment
        std::thread::sleep(Duration::from_millis(rng.random_range(400..1500)));
        if round % 2 == 1 {
            wait_for_a_save(&run_dir, Duration::from_secs(5));
            std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("round {round}: wmtp exited early ({status}): {err}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if !leftovers(&run_dir).is_empty() {
            during_save += 1;
        }
        let Some(latest) = checkpoint::latest(&run_dir) else {
            continue; // killed before the first checkpoint
        };
        // the latest complete checkpoint loads: config, trainer state, weights, optimiser, plugin state
        let (s, st, _) = wmtp_host::run::resume::resume_session(&latest, &[], None, false, None)
            .unwrap_or_else(|e| panic!("round {round}: {} does not load: {e:#}", latest.display()));
        assert_eq!(st.step, s.optimizer.steps_taken());
        steps_seen.push(st.step);
        checked += 1;
    }
    // progress was made across kills: each resumed round continued from the previous one's checkpoint
    assert!(
        steps_seen.windows(2).all(|w| w[0] <= w[1]),
        "{steps_seen:?}"
    );
    // and a last resume runs to completion
    let last = *steps_seen.last().expect("at least one checkpoint");
    let out = Command::new(env!("CARGO_BIN_EXE_wmtp"))
        .arg("run")
        .arg("--resume")
        .arg(&run_dir)
        .args(["--set", &format!("training.steps={}", last + 2)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(leftovers(&run_dir).is_empty(), "{:?}", leftovers(&run_dir));
    eprintln!(
        "kill -9 × {ROUNDS}: {during_save} kills left a save in progress; the latest checkpoint loaded after {checked} kills (steps {steps_seen:?}); final resume to step {} ok",
        last + 2
    );
    assert!(
        during_save >= 5,
        "too few kills landed in a save ({during_save}) to prove anything"
    );
}

/// Ctrl-C (SIGINT) saves a checkpoint at the step reached, says so on stderr (outside a terminal too),
/// and exits 130 — not 0 — so schedulers and scripts see the run did not finish; the checkpoint resumes.
#[test]
fn ctrl_c_saves_says_so_and_exits_130() {
    let dir = common::tempdir();
    let run_dir = dir.path().join("run");
    let child = start(&run_dir, false);
    // wait until it is training (a first complete checkpoint exists), then interrupt
    let t = Instant::now();
    while checkpoint::latest(&run_dir).is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no checkpoint within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling our own child process
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted at step"), "{err}");
    let latest = checkpoint::latest(&run_dir).expect("a checkpoint");
    assert!(err.contains(&latest.display().to_string()), "{err}");
    wmtp_host::run::resume::resume_session(&latest, &[], None, false, None)
        .unwrap_or_else(|e| panic!("{} does not load: {e:#}", latest.display()));
}
