//! `vhost-user-mali`: the daemon binary. Parses the command line, sets up
//! logging and signal handling, and runs the connection loop.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use log::{error, info};

use vhost_user_mali::daemon::{self, DaemonConfig, Shutdown};
use vhost_user_mali::native::NativeConfig;
use vhost_user_mali::virtio_gpu::control::{default_capset, GpuConfig};
use vhost_user_mali::virtio_gpu::resources::Limits;

/// Emulated GPU models.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum GpuModel {
    /// Mali-G610 (CSF, arch 10.8; GPU_ID 0xa8670005), as on RK3588 boards.
    G610,
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings (guest mistakes are warnings, rate-limited).
    Warn,
    /// Connections, feature negotiation, contexts, scanouts.
    Info,
    /// Every command.
    Debug,
    /// Everything, including library internals.
    Trace,
}

/// A vhost-user virtio-gpu device backed by an emulated Mali-like CSF GPU.
///
/// The daemon listens on a unix socket; QEMU (vhost-user-gpu-pci) or crosvm
/// connects to it and the guest sees a virtio-gpu device whose DRM native
/// context (capset 6) is an emulated Mali GPU. The daemon serves one
/// frontend at a time, connection after connection, until SIGINT or
/// SIGTERM. On start it prints the QEMU arguments that attach a guest.
#[derive(Debug, Parser)]
#[command(name = "vhost-user-mali", version, about, long_about)]
struct Cli {
    /// Unix socket to listen on. A stale socket left by an earlier run is
    /// replaced; a regular file, or a socket another process still serves,
    /// is refused.
    #[arg(long, value_name = "PATH")]
    socket_path: PathBuf,

    /// GPU model to emulate (its identity is reported in the capset and
    /// DEV_QUERY).
    #[arg(long, value_enum, default_value = "g610")]
    gpu_model: GpuModel,

    /// Number of display outputs (scanouts) the device offers, 1 to 16.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    scanouts: u32,

    /// Preferred display width when no frontend display is attached.
    #[arg(long, default_value_t = 1280, value_parser = clap::value_parser!(u32).range(1..=16384))]
    width: u32,

    /// Preferred display height when no frontend display is attached.
    #[arg(long, default_value_t = 800, value_parser = clap::value_parser!(u32).range(1..=16384))]
    height: u32,

    /// Host memory, in MiB, that one guest's 2D resources may use in total.
    #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_2d_memory: u64,

    /// How long a GPU job may run, in milliseconds, before its group is
    /// killed and the job completes with ETIMEDOUT (Panthor's default is
    /// 5 s). Reported to the guest in DEV_QUERY CONTEXT_INFO.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=600_000))]
    job_timeout_ms: u32,

    /// How long a SYNCOBJ_WAIT may wait, in milliseconds, before it ends
    /// with ETIME (at most the protocol's 10 s). Reported to the guest in
    /// DEV_QUERY CONTEXT_INFO.
    #[arg(long, value_name = "MS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_syncobj_wait_ms: u32,

    /// Bytes of user mappings one native context may have across its VMs,
    /// in MiB (at most the protocol's 256 GiB); a MAP beyond it fails with
    /// ENOMEM. Reported to the guest in DEV_QUERY CONTEXT_INFO.
    #[arg(long, value_name = "MIB", default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(1..=262_144))]
    max_mapped_mib: u64,

    /// Log level. Without it, RUST_LOG is used if set, else `info`.
    #[arg(long, value_enum)]
    log_level: Option<LogLevel>,
}

fn init_logging(level: Option<LogLevel>) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(l) = level {
        let f = match l {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        };
        b.filter_level(f);
    }
    b.format_timestamp_millis().init();
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread it
/// starts) and starts a thread that waits for them and requests shutdown.
fn install_signal_thread(shutdown: Shutdown) -> std::io::Result<()> {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before
    // use; pthread_sigmask only reads it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new()
        .name("vum-signals".into())
        .spawn(move || {
            let mut first = true;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is a valid initialised sigset_t and `sig` a
                // valid out pointer for the duration of the call.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    continue;
                }
                if first {
                    info!("signal {sig} received: shutting down");
                    shutdown.request();
                    first = false;
                } else {
                    error!("second signal {sig}: exiting at once");
                    std::process::exit(130);
                }
            }
        })?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level);

    let GpuModel::G610 = cli.gpu_model;
    let cfg = DaemonConfig {
        socket_path: cli.socket_path.clone(),
        gpu: GpuConfig {
            num_scanouts: cli.scanouts,
            width: cli.width,
            height: cli.height,
            limits: Limits {
                max_host_2d_bytes: cli.max_2d_memory << 20,
                ..Limits::default()
            },
            capset: default_capset(),
            native: NativeConfig {
                job_timeout_ms: cli.job_timeout_ms,
                max_syncobj_wait_ms: cli.max_syncobj_wait_ms,
                max_mapped_bytes: cli.max_mapped_mib << 20,
                ..NativeConfig::default()
            },
        },
    };

    let shutdown = Shutdown::new();
    if let Err(e) = install_signal_thread(shutdown.clone()) {
        eprintln!("vhost-user-mali: cannot set up signal handling: {e}");
        return ExitCode::FAILURE;
    }
    let listener = match daemon::bind(&cfg.socket_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vhost-user-mali: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!(
        "vhost-user-mali {} listening on {} (model {:?})",
        env!("CARGO_PKG_VERSION"),
        cfg.socket_path.display(),
        cli.gpu_model
    );
    println!(
        "Attach a guest with:\n  qemu-system-x86_64 {} ...",
        daemon::qemu_args(&cfg.socket_path)
    );
    match daemon::serve(listener, &cfg, &shutdown) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhost-user-mali: {e}");
            ExitCode::FAILURE
        }
    }
}
