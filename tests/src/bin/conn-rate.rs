//! New TCP connections per second through a network, for `benches/datapath.sh`:
//! `conn-rate --serve ADDR:PORT` accepts connections and closes each at
//! once; `conn-rate ADDR:PORT SECONDS` connects, waits for that close, and
//! connects again for SECONDS, from two threads, then prints the rate.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn serve(address: SocketAddr) -> ExitCode {
    let Ok(listener) = TcpListener::bind(address) else {
        eprintln!("conn-rate: cannot listen on {address}");
        return ExitCode::from(1);
    };
    println!("listening");
    for stream in listener.incoming() {
        drop(stream);
    }
    ExitCode::SUCCESS
}

fn connect_for(address: SocketAddr, seconds: f64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut done = 0;
    let mut byte = [0u8; 1];
    while Instant::now() < deadline {
        let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else { continue };
        // The server's close: the connection went all the way and back.
        let _ = stream.read(&mut byte);
        done += 1;
    }
    done
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, address] if flag == "--serve" => match address.parse() {
            Ok(address) => serve(address),
            Err(_) => ExitCode::from(2),
        },
        [address, seconds] => {
            let (Ok(address), Ok(seconds)) = (address.parse::<SocketAddr>(), seconds.parse::<f64>()) else {
                return ExitCode::from(2);
            };
            let started = Instant::now();
            let workers: Vec<_> = (0..2).map(|_| std::thread::spawn(move || connect_for(address, seconds))).collect();
            let total: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
            println!("{:.0}", total as f64 / started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: conn-rate --serve ADDR:PORT | conn-rate ADDR:PORT SECONDS");
            ExitCode::from(2)
        }
    }
}
