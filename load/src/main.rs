//! secrets-webhook-load: drives a running `secrets-webhook serve` over TLS and reports latency
//! percentiles, throughput, errors and the server's memory.
//!
//! Closed loop (no `--rate`): each connection sends the next request as soon as the last one is
//! answered — maximum throughput. Open loop (`--rate R`): requests are scheduled at R per second in
//! total and latency counts from the scheduled time, so a slow server cannot hide its queueing
//! (no coordinated omission). Only loopback or the project's own test hosts are valid targets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

#[derive(Parser, Clone)]
#[command(about = "Load generator for secrets-webhook serve")]
struct Args {
    /// Where `serve` listens.
    #[arg(long, default_value = "127.0.0.1:9443")]
    addr: SocketAddr,
    /// Path of the review endpoint.
    #[arg(long, default_value = "/mutate")]
    path: String,
    /// The CA that signed the server's certificate (local mode: ./certs/ca.crt).
    #[arg(long, default_value = "certs/ca.crt")]
    ca: PathBuf,
    /// The AdmissionReview to send (fixtures/bench/typical.json, …).
    #[arg(long)]
    body: PathBuf,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, value_enum, default_value_t = Protocol::H1)]
    http: Protocol,
    /// Open loop at this many requests per second in total; closed loop if unset.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured duration.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value_t = 2.0)]
    warmup_seconds: f64,
    /// The server's process id, to sample its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Per-100 ms latency series as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// The server's RSS once a second of the measurement as CSV (needs --server-pid).
    #[arg(long)]
    rss_csv: Option<PathBuf>,
    /// The same series as an SVG plot.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Appends one summary row to this CSV file (header written when new).
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Names this run in the summary.
    #[arg(long, default_value = "run")]
    label: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    H1,
    H2,
}

/// One measured request: when it was due, how long it took, whether it succeeded.
struct Sample {
    at: Duration,
    latency: Duration,
    ok: bool,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn connect(args: &Args, tls: &TlsConnector) -> Result<Self> {
        let tcp = TcpStream::connect(args.addr).await.context("connecting")?;
        tcp.set_nodelay(true)?;
        let stream = tls
            .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
            .await
            .context("TLS handshake")?;
        Ok(match args.http {
            Protocol::H1 => {
                let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                Sender::H1(sender)
            }
            Protocol::H2 => {
                let (sender, conn) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                Sender::H2(sender)
            }
        })
    }

    async fn send(&mut self, path: &str, body: &Bytes) -> Result<bool> {
        let request = http::Request::post(format!("https://localhost{path}"))
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))?;
        let response = match self {
            Sender::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(status == 200 && memchr_allowed(&body))
    }
}

fn memchr_allowed(body: &[u8]) -> bool {
    body.windows(14).any(|w| w == b"\"allowed\":true")
}

fn connector(ca: &PathBuf, http: Protocol) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    // ring, the webhook's own provider (secrets_webhook::tls::provider), without depending on it.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![match http {
        Protocol::H1 => b"http/1.1".to_vec(),
        Protocol::H2 => b"h2".to_vec(),
    }];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One connection's share of the run. Open loop: `dues` delivers the scheduled times of this
/// connection's requests; closed loop (`None`): the next request goes as soon as the last is answered.
async fn worker(
    args: Arc<Args>,
    tls: TlsConnector,
    body: Bytes,
    mut dues: Option<mpsc::UnboundedReceiver<Duration>>,
    start: Instant,
) -> Result<Vec<Sample>> {
    let mut sender = Sender::connect(&args, &tls).await?;
    let warmup = Duration::from_secs_f64(args.warmup_seconds);
    let end = warmup + Duration::from_secs_f64(args.seconds);
    let mut samples = Vec::new();
    loop {
        let due = match dues.as_mut() {
            Some(dues) => match dues.recv().await {
                Some(due) => due,
                None => break,
            },
            None => start.elapsed(),
        };
        if due >= end {
            break;
        }
        let ok = match sender.send(&args.path, &body).await {
            Ok(ok) => ok,
            Err(_) => {
                sender = Sender::connect(&args, &tls).await?;
                false
            }
        };
        let latency = start.elapsed().saturating_sub(due);
        if due >= warmup {
            samples.push(Sample {
                at: due - warmup,
                latency,
                ok,
            });
        }
    }
    Ok(samples)
}

/// The open loop's clock, on its own thread. tokio's timer rounds every sleep up to the next
/// millisecond, which would put up to 1 ms of the load generator's own lateness into every
/// latency; `thread::sleep` wakes within the kernel's timer slack (≈ 50 µs). Slot `i` is due at
/// `i / rate` and goes to connection `i mod connections`; a busy connection queues it, and its
/// latency still counts from the due time.
fn pace(rate: f64, end: Duration, start: Instant, dues: Vec<mpsc::UnboundedSender<Duration>>) {
    for slot in 0u64.. {
        let due = Duration::from_secs_f64(slot as f64 / rate);
        if due >= end {
            break;
        }
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        if dues[(slot % dues.len() as u64) as usize].send(due).is_err() {
            break;
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros().try_into().unwrap_or(u64::MAX).max(1)
}

struct Bucket {
    at: f64,
    count: u64,
    errors: u64,
    p50: u64,
    p99: u64,
    max: u64,
}

fn buckets(samples: &[Sample], width: Duration) -> Result<Vec<Bucket>> {
    let mut out: Vec<(Histogram<u64>, u64)> = Vec::new();
    for sample in samples {
        let index = (sample.at.as_nanos() / width.as_nanos()) as usize;
        while out.len() <= index {
            out.push((Histogram::new(3)?, 0));
        }
        out[index].0.record(micros(sample.latency))?;
        out[index].1 += u64::from(!sample.ok);
    }
    Ok(out
        .into_iter()
        .enumerate()
        .map(|(i, (histogram, errors))| Bucket {
            at: i as f64 * width.as_secs_f64(),
            count: histogram.len(),
            errors,
            p50: histogram.value_at_quantile(0.5),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
        })
        .collect())
}

fn write_csv(path: &PathBuf, series: &[Bucket]) -> Result<()> {
    let mut out = String::from("seconds,requests,errors,p50_us,p99_us,max_us\n");
    for b in series {
        out.push_str(&format!(
            "{:.1},{},{},{},{},{}\n",
            b.at, b.count, b.errors, b.p50, b.p99, b.max
        ));
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// A plain SVG line plot of p50 and p99 over time; no plotting library needed for two lines.
fn write_svg(path: &PathBuf, series: &[Bucket], title: &str) -> Result<()> {
    let (width, height, margin) = (800.0, 360.0, 50.0);
    let max_t = series.last().map_or(1.0, |b| b.at).max(0.1);
    let max_us = series.iter().map(|b| b.p99).max().unwrap_or(1).max(1) as f64 * 1.1;
    let x = |t: f64| margin + t / max_t * (width - 2.0 * margin);
    let y = |us: f64| height - margin - us / max_us * (height - 2.0 * margin);
    let line = |pick: fn(&Bucket) -> u64| {
        series
            .iter()
            .map(|b| format!("{:.1},{:.1}", x(b.at), y(pick(b) as f64)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{margin}" y="20" font-size="14">{title}</text>
<line x1="{margin}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>
<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{bottom}" stroke="black"/>
<text x="{right}" y="{label_y}" text-anchor="end">{max_t:.1} s</text>
<text x="5" y="{top_label}">{max_us:.0} µs</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{p50}"/>
<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{p99}"/>
<text x="{legend_x}" y="40" fill="#1f77b4">p50</text><text x="{legend_x}" y="56" fill="#d62728">p99</text>
</svg>
"##,
        bottom = height - margin,
        right = width - margin,
        label_y = height - margin + 16.0,
        top_label = margin + 4.0,
        legend_x = width - margin - 40.0,
        p50 = line(|b| b.p50),
        p99 = line(|b| b.p99),
    );
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    if !args.addr.ip().is_loopback() {
        bail!("only loopback addresses are load-tested here");
    }
    let body = Bytes::from(
        std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?,
    );
    let tls = connector(&args.ca, args.http)?;
    let start = Instant::now();
    // (seconds into the measurement, KiB) every 100 ms.
    let rss_series = Arc::new(std::sync::Mutex::new(Vec::<(f64, u64)>::new()));
    if let Some(pid) = args.server_pid {
        let (warmup, series) = (
            Duration::from_secs_f64(args.warmup_seconds),
            rss_series.clone(),
        );
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(100));
            while let Some(kib) = rss_kib(pid) {
                if let Some(at) = start.elapsed().checked_sub(warmup) {
                    series
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((at.as_secs_f64(), kib));
                }
                ticks.tick().await;
            }
        });
    }
    let mut receivers = Vec::new();
    if let Some(rate) = args.rate {
        let (senders, rx): (Vec<_>, Vec<_>) = (0..args.connections.max(1))
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        receivers = rx;
        let end = Duration::from_secs_f64(args.warmup_seconds + args.seconds);
        std::thread::spawn(move || pace(rate, end, start, senders));
    }
    let mut receivers = receivers.into_iter();
    let workers: Vec<_> = (0..args.connections)
        .map(|_| {
            tokio::spawn(worker(
                args.clone(),
                tls.clone(),
                body.clone(),
                receivers.next(),
                start,
            ))
        })
        .collect();
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await??);
    }
    let rss = rss_series.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let rss_max = rss.iter().map(|(_, kib)| *kib).max();
    let rss_min = rss.iter().map(|(_, kib)| *kib).min();
    if let (Some(first), Some(last), Some(min), Some(max)) =
        (rss.first(), rss.last(), rss_min, rss_max)
    {
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "server RSS: {:.1} MiB at the start of the measurement, {:.1} MiB at the end; \
             {:.1}–{:.1} MiB throughout (the top {:.1} % above the bottom)",
            mib(first.1),
            mib(last.1),
            mib(min),
            mib(max),
            (max - min) as f64 * 100.0 / min as f64
        );
    }
    if let Some(path) = &args.rss_csv {
        write_rss_csv(path, &rss)?;
    }
    report(&args, &samples, rss_max)
}

/// One row per whole second of the measurement: the first sample of that second.
fn write_rss_csv(path: &std::path::Path, series: &[(f64, u64)]) -> Result<()> {
    let mut out = String::from("second,rss_mib\n");
    let mut next = 0.0;
    for (at, kib) in series {
        if *at >= next {
            out.push_str(&format!("{next:.0},{:.2}\n", *kib as f64 / 1024.0));
            next += 1.0;
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn report(args: &Args, samples: &[Sample], rss_kib: Option<u64>) -> Result<()> {
    let mut histogram = Histogram::<u64>::new(3)?;
    for sample in samples {
        histogram.record(micros(sample.latency))?;
    }
    let errors = samples.iter().filter(|s| !s.ok).count();
    let throughput = samples.len() as f64 / args.seconds;
    let mode = args
        .rate
        .map_or("closed".to_owned(), |r| format!("open@{r}"));
    let http = match args.http {
        Protocol::H1 => "http1",
        Protocol::H2 => "http2",
    };
    let q = |q: f64| histogram.value_at_quantile(q);
    let rss = rss_kib.map_or("-".to_owned(), |kib| format!("{:.1}", kib as f64 / 1024.0));
    println!(
        "{label}: {http} {mode} x{conns}: {n} requests, {errors} errors, {throughput:.0} req/s, \
         p50 {p50} µs, p90 {p90} µs, p99 {p99} µs, p99.9 {p999} µs, max {max} µs, server RSS {rss} MiB",
        label = args.label,
        conns = args.connections,
        n = samples.len(),
        p50 = q(0.5),
        p90 = q(0.9),
        p99 = q(0.99),
        p999 = q(0.999),
        max = histogram.max(),
    );
    let series = buckets(samples, Duration::from_millis(100))?;
    if let Some(path) = &args.csv {
        write_csv(path, &series)?;
    }
    if let Some(path) = &args.svg {
        write_svg(
            path,
            &series,
            &format!("{} — {http} {mode} x{}", args.label, args.connections),
        )?;
    }
    if let Some(path) = &args.summary {
        let new = !path.exists();
        let mut row = String::new();
        if new {
            row.push_str("label,http,mode,connections,requests,errors,req_per_s,p50_us,p90_us,p99_us,p999_us,max_us,server_rss_mib\n");
        }
        row.push_str(&format!(
            "{},{http},{mode},{},{},{errors},{throughput:.0},{},{},{},{},{},{rss}\n",
            args.label,
            args.connections,
            samples.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            histogram.max()
        ));
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .write_all(row.as_bytes())?;
    }
    Ok(())
}
