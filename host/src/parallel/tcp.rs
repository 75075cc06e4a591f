//! A group of processes over TCP ([`TcpComm`]), the backend of `wmtp launch` on CPU: rank 0 listens at
//! the master address, the other ranks connect to it (rendezvous), and every collective is an exchange
//! through rank 0 (each rank sends its tensor, rank 0 sends the whole set back). Star-shaped and
//! uncompressed: made for CPU runs and tests of the launcher, not for GPU bandwidth (that is NCCL's job).
//!
//! Failures end every rank with a message instead of a hang: a rank that cannot reach rank 0 within the
//! timeout, rank 0 waiting for ranks that never arrive (named), a rank that exits (its connection
//! closes: rank 0 tells the others which rank left), a collective that outlasts the timeout.
//!
//! Frames: 8-byte little-endian length, then one tag byte (0 = tensors, 1 = error text) and the body;
//! tensors travel as safetensors bytes.

use super::exchange::Exchange;
use candle_core::{bail, Result, Tensor};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One rank's end of a TCP group.
pub struct TcpComm {
    rank: usize,
    world: usize,
    /// Rank 0: the connections to ranks 1..W (index r−1). Other ranks: the one connection to rank 0.
    peers: Mutex<Vec<TcpStream>>,
}

impl std::fmt::Debug for TcpComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TcpComm(rank {} of {})", self.rank, self.world)
    }
}

const TENSORS: u8 = 0;
const ERROR: u8 = 1;
/// Largest frame accepted (a corrupt length must not allocate without bound).
const MAX_FRAME: u64 = 1 << 36;

fn io_err(what: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(what.to_string())
}

fn send(s: &mut TcpStream, tag: u8, body: &[u8]) -> std::io::Result<()> {
    let mut head = ((body.len() + 1) as u64).to_le_bytes().to_vec();
    head.push(tag);
    s.write_all(&head)?;
    s.write_all(body)?;
    s.flush()
}

fn recv(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad frame length {len}"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)?;
    let tag = body.remove(0);
    Ok((tag, body))
}

fn encode(tensors: &[Tensor]) -> Result<Vec<u8>> {
    let named: Vec<(String, Tensor)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Ok((
                i.to_string(),
                t.to_device(&candle_core::Device::Cpu)?.contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(|e| io_err(format!("encoding tensors: {e}")))
}

fn decode(bytes: &[u8], n: usize) -> Result<Vec<Tensor>> {
    let mut map = candle_core::safetensors::load_buffer(bytes, &candle_core::Device::Cpu)?;
    (0..n)
        .map(|i| {
            map.remove(&i.to_string())
                .ok_or_else(|| io_err(format!("a frame without tensor {i}")))
        })
        .collect()
}

/// Why a read or write on the connection with `peer` failed, in words.
fn lost(peer: usize, e: &std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
            "rank {peer} did not answer within {:.0} s",
            timeout.as_secs_f64()
        ),
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe => {
            format!("rank {peer} left the group (its connection closed)")
        }
        _ => format!("the connection with rank {peer} failed: {e}"),
    }
}

impl TcpComm {
    /// Joins the group of `world` ranks as `rank`: rank 0 listens at `master` and waits for the
    /// others; the others connect to it, retrying until `timeout`. Every later collective waits at most
    /// `timeout` for the others.
    pub fn connect(
        rank: usize,
        world: usize,
        master: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            world >= 1 && rank < world,
            "rank {rank} outside a world of {world}"
        );
        let addr: SocketAddr = master
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("master address `{master}`: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("master address `{master}` resolves to nothing"))?;
        let deadline = Instant::now() + timeout;
        let peers = if rank == 0 {
            Self::accept_all(addr, world, deadline, timeout)?
        } else {
            vec![Self::reach_master(addr, rank, world, deadline, timeout)?]
        };
        for p in &peers {
            p.set_read_timeout(Some(timeout))?;
            p.set_write_timeout(Some(timeout))?;
            p.set_nodelay(true)?;
        }
        Ok(TcpComm {
            rank,
            world,
            peers: Mutex::new(peers),
        })
    }

    fn accept_all(
        addr: SocketAddr,
        world: usize,
        deadline: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Vec<TcpStream>> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            anyhow::anyhow!("rank 0 cannot listen at {addr}: {e} (is the port in use?)")
        })?;
        listener.set_nonblocking(true)?;
        let mut slots: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        while slots.iter().any(Option::is_none) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    let mut hello = [0u8; 16];
                    if s.read_exact(&mut hello).is_err() {
                        continue; // not one of ours
                    }
                    let r = u64::from_le_bytes(hello[..8].try_into()?) as usize;
                    let w = u64::from_le_bytes(hello[8..].try_into()?) as usize;
                    if w != world || r == 0 || r >= world || slots[r - 1].is_some() {
                        let _ = send(
                            &mut s,
                            ERROR,
                            format!("rank 0 expects ranks 1..{world} of {world}, once each; got rank {r} of {w}").as_bytes(),
                        );
                        continue;
                    }
                    slots[r - 1] = Some(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<usize> = slots
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| s.is_none())
                            .map(|(i, _)| i + 1)
                            .collect();
                        anyhow::bail!(
                            "rendezvous at {addr}: ranks {missing:?} did not arrive within {:.0} s",
                            timeout.as_secs_f64()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => anyhow::bail!("rendezvous at {addr}: {e}"),
            }
        }
        let mut peers: Vec<TcpStream> = slots.into_iter().flatten().collect();
        for s in &mut peers {
            send(s, TENSORS, b"ready")?;
        }
        Ok(peers)
    }

    fn reach_master(
        addr: SocketAddr,
        rank: usize,
        world: usize,
        deadline: Instant,
        timeout: Duration,
    ) -> anyhow::Result<TcpStream> {
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(mut s) => {
                    let mut hello = (rank as u64).to_le_bytes().to_vec();
                    hello.extend((world as u64).to_le_bytes());
                    s.write_all(&hello)?;
                    s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))?;
                    return match recv(&mut s) {
                        Ok((TENSORS, _)) => Ok(s),
                        Ok((_, why)) => anyhow::bail!(
                            "rank {rank}: rank 0 at {addr} refused: {}",
                            String::from_utf8_lossy(&why)
                        ),
                        Err(e) => anyhow::bail!(
                            "rank {rank}: rendezvous at {addr}: rank 0 did not confirm within {:.0} s ({e})",
                            timeout.as_secs_f64()
                        ),
                    };
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => anyhow::bail!(
                    "rank {rank}: could not reach rank 0 at {addr} within {:.0} s ({e}); check --master-addr/--master-port",
                    timeout.as_secs_f64()
                ),
            }
        }
    }

    fn timeout(s: &TcpStream) -> Duration {
        s.read_timeout().ok().flatten().unwrap_or_default()
    }

    /// Rank 0's side: collects every rank's tensor, sends the set back (or the reason it failed).
    fn hub(&self, peers: &mut [TcpStream], x: &Tensor, what: &str) -> Result<Arc<Vec<Tensor>>> {
        let mut all = vec![x.to_device(&candle_core::Device::Cpu)?];
        let mut failure = None;
        for (i, s) in peers.iter_mut().enumerate() {
            let t = Self::timeout(s);
            match recv(s) {
                Ok((TENSORS, body)) => match decode(&body, 1) {
                    Ok(mut v) => all.push(v.remove(0)),
                    Err(e) => failure = Some(format!("rank {}: {e}", i + 1)),
                },
                Ok((_, why)) => failure = Some(String::from_utf8_lossy(&why).into_owned()),
                Err(e) => failure = Some(lost(i + 1, &e, t)),
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some(why) = failure {
            for s in peers.iter_mut() {
                let _ = send(s, ERROR, why.as_bytes());
                let _ = s.shutdown(Shutdown::Both);
            }
            bail!("{what} (rank 0): {why}");
        }
        let body = encode(&all)?;
        for (i, s) in peers.iter_mut().enumerate() {
            let t = Self::timeout(s);
            send(s, TENSORS, &body)
                .map_err(|e| io_err(format!("{what} (rank 0): {}", lost(i + 1, &e, t))))?;
        }
        Ok(Arc::new(all))
    }

    /// Another rank's side: sends its tensor to rank 0, receives the set.
    fn spoke(&self, s: &mut TcpStream, x: &Tensor, what: &str) -> Result<Arc<Vec<Tensor>>> {
        let r = self.rank;
        let t = Self::timeout(s);
        send(s, TENSORS, &encode(std::slice::from_ref(x))?)
            .map_err(|e| io_err(format!("{what} (rank {r}): {}", lost(0, &e, t))))?;
        match recv(s) {
            Ok((TENSORS, body)) => Ok(Arc::new(decode(&body, self.world)?)),
            Ok((_, why)) => bail!("{what} (rank {r}): {}", String::from_utf8_lossy(&why)),
            Err(e) => bail!("{what} (rank {r}): {}", lost(0, &e, t)),
        }
    }
}

impl Exchange for TcpComm {
    fn member(&self) -> (usize, usize) {
        (self.rank, self.world)
    }

    fn exchange(&self, x: &Tensor, what: &str) -> Result<Arc<Vec<Tensor>>> {
        let mut peers = self
            .peers
            .lock()
            .map_err(|_| io_err("communicator: a thread panicked inside a collective"))?;
        if self.world == 1 {
            return Ok(Arc::new(vec![x.clone()]));
        }
        if self.rank == 0 {
            self.hub(&mut peers, x, what)
        } else {
            let s = peers
                .first_mut()
                .ok_or_else(|| io_err("no connection to rank 0"))?;
            self.spoke(s, x, what)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::Communicator;
    use candle_core::Device;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    #[test]
    fn collectives_over_tcp_agree_with_their_definitions() {
        let n = 3;
        let master = format!("127.0.0.1:{}", free_port());
        let hs: Vec<_> = (0..n)
            .map(|rank| {
                let master = master.clone();
                std::thread::spawn(move || -> anyhow::Result<(Vec<f32>, Vec<f32>, Vec<f64>)> {
                    let c = TcpComm::connect(rank, n, &master, Duration::from_secs(20))?;
                    let r = rank as f32;
                    let sum = c
                        .all_reduce_sum(&Tensor::new(&[r, 1.0], &Device::Cpu)?)?
                        .to_vec1()?;
                    let mine = c
                        .reduce_scatter_sum(&Tensor::arange(0f32, 6.0, &Device::Cpu)?)?
                        .to_vec1()?;
                    let f = c
                        .all_reduce_sum(&Tensor::new(&[0.1f64 * rank as f64], &Device::Cpu)?)?
                        .to_vec1()?;
                    c.barrier()?;
                    Ok((sum, mine, f))
                })
            })
            .collect();
        for (rank, h) in hs.into_iter().enumerate() {
            let (sum, mine, f) = h.join().expect("thread").expect("collectives");
            assert_eq!(sum, vec![3.0, 3.0]);
            assert_eq!(mine, vec![6.0 * rank as f32, 3.0 * (2 * rank + 1) as f32]);
            assert!((f[0] - 0.3).abs() < 1e-15, "f64 sums stay f64: {}", f[0]);
        }
    }

    #[test]
    fn a_rank_that_never_connects_is_named_by_rank_0() {
        let master = format!("127.0.0.1:{}", free_port());
        let e = TcpComm::connect(0, 3, &master, Duration::from_millis(600))
            .expect_err("ranks 1 and 2 never come")
            .to_string();
        assert!(e.contains("ranks [1, 2] did not arrive"), "{e}");
    }

    #[test]
    fn a_rank_that_exits_stops_the_others_with_its_name() {
        let master = format!("127.0.0.1:{}", free_port());
        let hs: Vec<_> = (0..3)
            .map(|rank| {
                let master = master.clone();
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let c = TcpComm::connect(rank, 3, &master, Duration::from_secs(20))?;
                    if rank == 2 {
                        return Ok(()); // exits: its connection closes
                    }
                    c.barrier()?;
                    Ok(())
                })
            })
            .collect();
        for (rank, h) in hs.into_iter().enumerate() {
            let r = h.join().expect("thread");
            if rank != 2 {
                let e = r.expect_err("the others fail").to_string();
                assert!(e.contains("rank 2 left the group"), "rank {rank}: {e}");
            }
        }
    }

    #[test]
    fn a_wrong_master_port_is_named_by_the_rank_that_cannot_reach_it() {
        let master = format!("127.0.0.1:{}", free_port());
        let e = TcpComm::connect(1, 2, &master, Duration::from_millis(500))
            .expect_err("nobody listens there")
            .to_string();
        assert!(
            e.contains("could not reach rank 0") && e.contains("--master-port"),
            "{e}"
        );
    }
}
