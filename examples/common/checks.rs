//! What an example expects to see, checked against what it saw: the binaries print the list
//! and exit non-zero when one fails; the tests assert that none did.

use std::fmt::Debug;

/// One expectation and its outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// An example's expectations, in the order it met them.
#[derive(Debug, Default, Clone)]
pub struct Checks {
    pub system: &'static str,
    pub list: Vec<Check>,
}

impl Checks {
    pub fn new(system: &'static str) -> Checks {
        Checks {
            system,
            list: Vec::new(),
        }
    }

    /// Expects `got == want`.
    pub fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) -> bool {
        let ok = got == want;
        let detail = if ok {
            format!("{got:?}")
        } else {
            format!("got {got:?}, expected {want:?}")
        };
        self.push(what, ok, detail)
    }

    /// Expects `ok`, saying `detail` either way.
    pub fn that(&mut self, what: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.push(what, ok, detail.into())
    }

    fn push(&mut self, what: &str, ok: bool, detail: String) -> bool {
        println!(
            "[{}] {} {what}: {detail}",
            self.system,
            if ok { "ok  " } else { "FAIL" }
        );
        self.list.push(Check {
            what: what.to_string(),
            ok,
            detail,
        });
        ok
    }

    /// The failed expectations.
    pub fn failures(&self) -> Vec<&Check> {
        self.list.iter().filter(|c| !c.ok).collect()
    }

    /// The check named `what` (the first one), for tests.
    pub fn get(&self, what: &str) -> Option<&Check> {
        self.list.iter().find(|c| c.what == what)
    }
}
