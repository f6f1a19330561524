//! glibc loads the module by the name `libnss_kvmnet.so.2`: give the
//! library that name as its soname too.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnss_kvmnet.so.2");
}
