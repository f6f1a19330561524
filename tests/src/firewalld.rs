//! A real firewalld (with its own system bus) in a test's network namespace
//! and sandbox: its `/run` and `/etc` are the sandbox's, so the machine's
//! firewalld configuration and bus are never touched.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::sandbox::Sandbox;
use crate::Netns;

/// dbus-daemon and firewalld, stopped when dropped.
pub struct Firewalld<'a> {
    sandbox: &'a Sandbox,
    ns: &'a Netns,
    daemons: Vec<Child>,
}

impl<'a> Firewalld<'a> {
    /// Starts a system bus and firewalld (its default configuration: zone
    /// public) in `ns`, and waits until it says it is running.
    pub fn start(sandbox: &'a Sandbox, ns: &'a Netns) -> Self {
        let spawn = |script: &str| {
            sandbox
                .command(ns, None, Path::new("sh"), &["-ec", script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting a daemon in the sandbox")
        };
        let bus = spawn("mkdir -p /run/dbus; exec dbus-daemon --system --nofork --nopidfile");
        let mut firewalld = Self { sandbox, ns, daemons: vec![bus] };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sandbox.run(ns, None, Path::new("test"), &["-S", "/run/dbus/system_bus_socket"]).status.success() {
            assert!(Instant::now() < deadline, "the system bus did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        firewalld.daemons.push(spawn("mkdir -p /run/firewalld; exec firewalld --nofork --nopid"));
        while firewalld.cmd_output(&["--state"]).0 != "running" {
            assert!(Instant::now() < deadline, "firewalld did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        firewalld
    }

    fn cmd_output(&self, args: &[&str]) -> (String, bool) {
        let out = self.sandbox.run(self.ns, None, Path::new("firewall-cmd"), args);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned() + String::from_utf8_lossy(&out.stderr).trim();
        (text, out.status.success())
    }

    /// Runs firewall-cmd; what it printed (stdout, then stderr), whatever its status.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.cmd_output(args).0
    }

    /// Everything firewalld has: every zone, at runtime and permanently.
    pub fn configuration(&self) -> String {
        self.cmd(&["--list-all-zones"]) + &self.cmd(&["--permanent", "--list-all-zones"])
    }
}

impl Drop for Firewalld<'_> {
    fn drop(&mut self) {
        for daemon in self.daemons.iter_mut().rev() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}
