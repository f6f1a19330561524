//! Runs bridge helpers as QEMU does (a socket pair, `--fd=N --br=NAME`, the
//! tap's descriptor received), for `benches/run.sh`: each helper in turn,
//! `--repeat` times, timing each whole process from spawn to exit, then
//! prints one line per helper: `HELPER median_us mean_us runs`. With
//! `--hold-first`, each helper is first called once, untimed, and that tap
//! is held to the end: the network then has a VM running, as for any VM
//! but the first.
//!
//!   bridge-helper-driver [--repeat N] [--use-vnet] [--hold-first] --br=NAME HELPER...

use std::process::{Command, ExitCode};
use std::time::Duration;

use kvm_net_tests::bridge::{call, qemu_arguments};

fn main() -> ExitCode {
    let mut repeat = 1usize;
    let mut use_vnet = false;
    let mut hold_first = false;
    let mut bridge = None;
    let mut helpers = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--repeat" {
            repeat = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if arg == "--use-vnet" {
            use_vnet = true;
        } else if arg == "--hold-first" {
            hold_first = true;
        } else if let Some(name) = arg.strip_prefix("--br=") {
            bridge = Some(name.to_owned());
        } else {
            helpers.push(arg);
        }
    }
    let (Some(bridge), false, true) = (bridge, helpers.is_empty(), repeat > 0) else {
        eprintln!("usage: bridge-helper-driver [--repeat N] [--use-vnet] [--hold-first] --br=NAME HELPER...");
        return ExitCode::from(2);
    };
    let run = |helper: &str| {
        let mut command = Command::new(helper);
        command.args(qemu_arguments(&bridge, use_vnet));
        let received = call(command);
        if !received.succeeded() {
            eprintln!("{helper} failed ({}): {}", received.output.status, received.stderr());
        }
        received.succeeded().then_some(received)
    };
    let mut held = Vec::new();
    if hold_first {
        for helper in &helpers {
            let Some(received) = run(helper) else { return ExitCode::from(1) };
            held.push(received);
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(repeat); helpers.len()];
    for _ in 0..repeat {
        for (helper, times) in helpers.iter().zip(&mut times) {
            let Some(received) = run(helper) else { return ExitCode::from(1) };
            times.push(received.elapsed);
        }
    }
    for (helper, mut times) in helpers.iter().zip(times) {
        times.sort();
        let median = times[times.len() / 2];
        let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap_or(u32::MAX);
        println!("{helper} {} {} {}", median.as_micros(), mean.as_micros(), times.len());
    }
    drop(held);
    ExitCode::SUCCESS
}
