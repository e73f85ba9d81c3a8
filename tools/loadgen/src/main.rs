//! `loadgen`: drives a directus-relay with many kiosks and a steady stream of webhook changes,
//! and measures what the relay does with them. `loadgen --help` lists the options;
//! `tools/measure-memory.sh` runs the memory scenarios with it.
//!
//! # Layout
//!
//! * `args`     — the command line.
//! * `run`      — the phases: connect, settle, oversized message, warm-up, load (lag), drain,
//!   report.
//! * `kiosk`    — one kiosk: handshake, reading events, lagging, stalling, the oversized message.
//! * `engineio` — Engine.IO / Socket.IO packets over WebSocket text messages.
//! * `hook`     — a minimal keep-alive HTTP/1.1 client for the webhook and `/metrics`.
//! * `stats`    — shared counters and the latency histogram.
//! * `procfs`   — RSS and CPU time of the relay and of the loadgen, the machine's TCP socket
//!   buffers, the open-files limit.
//! * `report`   — the JSON line and the table.

mod args;
mod engineio;
mod hook;
mod kiosk;
mod procfs;
mod report;
mod run;
mod stats;

use std::process::ExitCode;

fn main() -> ExitCode {
    let options = match args::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let nofile = match procfs::raise_nofile() {
        Ok(limit) => limit,
        Err(e) => {
            eprintln!("loadgen: could not raise the open-files limit: {e}");
            0
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(options, nofile)) {
        Ok(report) => {
            eprintln!("{}", report::table(&report));
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
