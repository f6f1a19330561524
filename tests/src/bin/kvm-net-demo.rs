//! `make demo`: one VM networked through kvm-natup/kvm-natdown, in throwaway
//! network namespaces, narrated in a few lines. The host's own network is
//! never touched: the "host" here is a namespace, and so is the "internet".

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kvm_net_tests::inspect::{kvm_net_lines, link_exists};
use kvm_net_tests::lab::{Lab, UpstreamServer, HOST_UPLINK, UPSTREAM};
use kvm_net_tests::qemu::{Vm, VmSpec};

const BOOT: Duration = Duration::from_secs(120);

/// Prints the helpers' KVM_NET_DEBUG trace lines, tagged with who ran them.
fn print_steps(who: &str, stderr: &str) {
    for line in stderr.lines().filter(|l| l.starts_with("kvm-net[")) {
        println!("  {who} {}", line.split_once("]: ").map_or(line, |(_, step)| step));
    }
}

fn main() -> ExitCode {
    let started = Instant::now();
    println!("kvm-net demo: a QEMU guest networked by kvm-natup, inside throwaway network namespaces");
    let lab = Lab::new();
    println!("  lab: namespace \"host\" ({HOST_UPLINK}) <-veth-> namespace \"upstream\" ({UPSTREAM}), no route back to 192.168.100.0/24");
    let server = UpstreamServer::start(&lab.upstream, UPSTREAM);
    let spec = VmSpec::new("demo", "demotap0", 1)
        .order("ip", "192.168.100.10/24")
        .order("gw", "192.168.100.1")
        .order("ping", format!("192.168.100.1,{UPSTREAM}"))
        .order("tcp", format!("{UPSTREAM}:{}", server.port()))
        .order("stay", 2)
        .env("KVM_NET_DEBUG", "1");
    println!(
        "  qemu: -netdev tap,ifname=demotap0,script=kvm-natup,downscript=kvm-natdown (TCG, a few seconds to boot)"
    );
    let vm = Vm::start(&lab.host, &spec);

    let ready = vm.wait_for("KVMNET-READY", BOOT).is_some();
    if ready {
        print_steps("kvm-natup  ", &vm.stderr_so_far());
        let address = lab.host.ok(&["ip", "-o", "-4", "addr", "show", "dev", "br0"]);
        let address = address.split_whitespace().nth(3).unwrap_or("?").to_owned();
        let ports = lab.host.ok(&["ip", "-o", "link", "show", "master", "br0"]).lines().count();
        let rules = kvm_net_lines(&lab.host, "nat").len() + kvm_net_lines(&lab.host, "filter").len();
        println!(
            "  while the VM runs: bridge br0 {address}, {ports} port (demotap0), {rules} kvm-net lines in iptables -S"
        );
    }
    let natup_trace = vm.stderr_so_far();
    let run = vm.wait(BOOT);
    println!("  the guest, on its serial console:");
    for line in run.console.iter().filter(|l| l.starts_with("KVMNET-RESULT")) {
        println!("    {}", line.trim_start_matches("KVMNET-RESULT "));
    }
    for seen in server.seen() {
        println!("  upstream saw: a connection from {} saying {:?}", seen.peer, seen.message);
    }
    print_steps("kvm-natdown", run.stderr.strip_prefix(natup_trace.as_str()).unwrap_or(&run.stderr));

    let passed = ["link", "ping:192.168.100.1", &format!("ping:{UPSTREAM}"), "tcp"]
        .iter()
        .all(|step| run.result(step).is_some_and(|(ok, _)| ok));
    let natted = server.seen().iter().any(|s| s.peer == HOST_UPLINK && s.message == "hello-from-demo");
    let clean = !link_exists(&lab.host, "br0")
        && kvm_net_lines(&lab.host, "nat").is_empty()
        && kvm_net_lines(&lab.host, "filter").is_empty();
    println!(
        "  after QEMU exited: bridge br0 {}, kvm-net rules {}",
        if link_exists(&lab.host, "br0") { "still there" } else { "gone" },
        if clean { "gone" } else { "still there" }
    );
    let verdict = ready && passed && natted && clean;
    println!(
        "verdict: {} ({:.1} s; the namespaces are removed as the demo exits)",
        if verdict {
            "PASS - the guest reached upstream through NAT, and kvm-natdown left nothing behind"
        } else {
            "FAIL"
        },
        started.elapsed().as_secs_f64()
    );
    if !verdict {
        eprintln!("qemu stderr:\n{}", run.stderr);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
