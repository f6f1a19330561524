//! Times helper runs side by side, for `benches/run.sh`: before each run a
//! preparing command puts things back as the run expects them (by default
//! `ip link set dev TAP nomaster`: a tap as a VM start finds it), untimed;
//! then the command runs, timed from spawn to exit. The commands take turns
//! (A B C A B C ...), so that each ratio compares runs made side by side on
//! a machine whose speed drifts. Prints one line per command, `median_us
//! ratio_to_first COMMAND`, the ratio the median of the paired ratios; the
//! first command is the yardstick.
//!
//!   attach-driver --repeat N (--tap TAP | --prepare 'PROGRAM ARG...') -- COMMAND [;; COMMAND ...]

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> ExitCode {
    let mut repeat = 0usize;
    let mut prepare: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repeat" => repeat = args.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            "--tap" => {
                prepare =
                    args.next().map(|tap| ["ip", "link", "set", "dev", &tap, "nomaster"].map(str::to_owned).to_vec())
            }
            "--prepare" => prepare = args.next().map(|line| line.split_whitespace().map(str::to_owned).collect()),
            "--" => break,
            _ => repeat = 0,
        }
    }
    let rest: Vec<String> = args.collect();
    let commands: Vec<Vec<String>> =
        rest.split(|word| word == ";;").filter(|c| !c.is_empty()).map(<[String]>::to_vec).collect();
    let (Some(prepare), true, false) = (prepare.filter(|p| !p.is_empty()), repeat > 0, commands.is_empty()) else {
        eprintln!(
            "usage: attach-driver --repeat N (--tap TAP | --prepare 'PROGRAM ARG...') -- COMMAND [;; COMMAND ...]"
        );
        return ExitCode::from(2);
    };
    let detach = || Command::new(&prepare[0]).args(&prepare[1..]).status().is_ok_and(|s| s.success());
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(repeat); commands.len()];
    // Two untimed rounds first: caches warm, every network up.
    for round in 0..repeat + 2 {
        for (command, times) in commands.iter().zip(&mut times) {
            if !detach() {
                eprintln!("attach-driver: {} failed", prepare.join(" "));
                return ExitCode::from(1);
            }
            let started = Instant::now();
            let status = Command::new(&command[0]).args(&command[1..]).stdin(Stdio::null()).status();
            let elapsed = started.elapsed();
            if !status.is_ok_and(|s| s.success()) {
                eprintln!("attach-driver: {} failed", command.join(" "));
                return ExitCode::from(1);
            }
            if round >= 2 {
                times.push(elapsed);
            }
        }
    }
    for (command, own) in commands.iter().zip(&times) {
        let mut micros: Vec<f64> = own.iter().map(|t| t.as_secs_f64() * 1e6).collect();
        let mut ratios: Vec<f64> = own.iter().zip(&times[0]).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64()).collect();
        println!("{:.0} {:.2} {}", median(&mut micros), median(&mut ratios), command.join(" "));
    }
    ExitCode::SUCCESS
}
