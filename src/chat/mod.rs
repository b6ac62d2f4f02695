//! `dyconit-chat chat`: a terminal chat client on top of [`crate::client`].
//!
//! - [`interactive`]: the line interface (messages, a status line, commands).
//! - [`script`]: the non-interactive modes `--send` and `--follow`.
//! - [`link`]: a connection that comes back after a server restart.
//! - [`term`]: terminal helpers.

pub mod interactive;
pub mod link;
pub mod script;
pub mod term;

use crate::proto::message_status::StatusCode;
use std::process::ExitCode;

/// Exit codes of `chat --send`, one per outcome (also listed in `--help`).
pub mod exit {
    /// The message was committed.
    pub const OK: u8 = 0;
    /// The server could not be reached, or an RPC failed.
    pub const UNREACHABLE: u8 = 1;
    /// Bad command-line usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// `CLIENT_ERROR`: the message was malformed (e.g. empty or too long).
    pub const CLIENT_ERROR: u8 = 3;
    /// `INTERNAL_ERROR`: the server failed to store the message.
    pub const INTERNAL_ERROR: u8 = 4;
    /// `ORDER_ERROR` on the last attempt.
    pub const ORDER_ERROR: u8 = 5;
    /// `NUMERICAL_ERROR` on the last attempt.
    pub const NUMERICAL_ERROR: u8 = 6;
    /// `STALENESS` on the last attempt.
    pub const STALENESS: u8 = 7;
}

/// The exit code for a final `MessageStatus`.
pub fn exit_code(status: StatusCode) -> u8 {
    match status {
        StatusCode::Ok => exit::OK,
        StatusCode::ClientError => exit::CLIENT_ERROR,
        StatusCode::InternalError => exit::INTERNAL_ERROR,
        StatusCode::OrderError => exit::ORDER_ERROR,
        StatusCode::NumericalError => exit::NUMERICAL_ERROR,
        StatusCode::Staleness => exit::STALENESS,
    }
}

const AFTER_HELP: &str = "\
Interactive commands:
  /thread NAME   write to thread NAME from now on (/thread alone: the main room)
  /threads       list the threads seen so far, with message counts
  /status        print the status: server clock offset, lease left, last rejection
  /help          list these commands
  /quit          leave (so does end of input, Ctrl-D)
Anything else is sent as a message to the current thread. Rejected messages
(ORDER_ERROR, NUMERICAL_ERROR, STALENESS) are retried with backoff; the status
line shows the latest rejection and its retry.

Exit codes of --send:
  0  OK: the message was committed
  1  the server could not be reached, or an RPC failed
  2  bad usage
  3  CLIENT_ERROR    4  INTERNAL_ERROR    5  ORDER_ERROR
  6  NUMERICAL_ERROR 7  STALENESS   (the status of the last attempt)

--follow prints one JSON object per received message on stdout:
  {\"thread\":\"\",\"sender\":\"alice\",\"contents\":\"hi\",
   \"server_time_us\":1795671234567890,\"received_at_us\":1795671234568012,
   \"history\":false}
(\"history\" is true for messages that were already committed when the stream
started). Connection notes go to stderr. Both interactive mode and --follow
reconnect after a server restart (as a new client) and say so; with several
--server URLs (chat nodes of one cluster) they reconnect to the next one.";

/// Longest display name the server accepts, in characters.
const MAX_NAME_CHARS: usize = 64;

/// Checks `--name` before anything is sent, so a bad name is a usage error
/// (exit 2, one message) rather than a round trip that ends in a server error.
/// A name travels in the `x-chat-name` header, which carries printable ASCII
/// only; the server refuses control characters and more than 64.
fn parse_name(name: &str) -> Result<String, String> {
    let chars = name.chars().count();
    if chars == 0 {
        return Err("the name is empty (give 1 to 64 characters, or leave --name out for a server-assigned handle)".into());
    }
    if chars > MAX_NAME_CHARS {
        return Err(format!(
            "the name has {chars} characters; at most {MAX_NAME_CHARS} are allowed"
        ));
    }
    if let Some(c) = name.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(format!(
            "{c:?} is not allowed: a name is printable ASCII (letters, digits, punctuation, spaces)"
        ));
    }
    Ok(name.to_owned())
}

/// Flags of `dyconit-chat chat`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct ChatArgs {
    /// Server URL: http://HOST:PORT, or https://HOST:PORT for a server with
    /// TLS. Several chat nodes of one cluster as URL,URL,...: a lost
    /// connection goes on on the next one (as a new client, with the history
    /// from the stream)
    #[arg(
        long,
        env = "DYCONIT_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub server: String,
    /// With an https:// URL: trust the CA certificates in FILE (PEM) instead
    /// of the system's (for a private CA or a self-signed certificate)
    #[arg(long, env = "DYCONIT_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// A JWT for a server that authenticates (`dyconit-chat token` makes
    /// one); your name then comes from it, and --name is not allowed
    #[arg(
        long,
        env = "DYCONIT_TOKEN",
        value_name = "JWT",
        hide_env_values = true,
        conflicts_with = "name"
    )]
    pub token: Option<String>,
    /// Your display name (1-64 printable ASCII characters, spaces allowed),
    /// shown to others as the sender; without it the server assigns a handle
    /// such as user-1a2b3c4d
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,
    /// The thread to write to at the start ("" or absent: the main room)
    #[arg(long, default_value = "", value_name = "THREAD")]
    pub thread: String,
    /// Send TEXT to --thread, print the status, and exit with a code that
    /// reflects it (see below)
    #[arg(long, value_name = "TEXT", conflicts_with = "follow")]
    pub send: Option<String>,
    /// Print every received message as a JSON line on stdout until killed
    #[arg(long)]
    pub follow: bool,
    /// With --send: retries after ORDER_ERROR, NUMERICAL_ERROR or STALENESS
    /// (0: one attempt only)
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub retries: u32,
}

impl ChatArgs {
    /// How to reach the server: `--ca-cert` read, `--token` attached.
    pub fn connect_options(
        &self,
    ) -> Result<crate::client::ConnectOptions, crate::client::ClientError> {
        let mut options = match &self.ca_cert {
            Some(path) => crate::client::ConnectOptions::with_ca_file(path)?,
            None => crate::client::ConnectOptions::default(),
        };
        options.token = self.token.clone().filter(|t| !t.is_empty());
        Ok(options)
    }
}

/// Runs `chat` and returns the process exit code.
pub async fn run(args: ChatArgs) -> ExitCode {
    if let Some(text) = &args.send {
        return ExitCode::from(script::send(&args, text).await);
    }
    if args.follow {
        return ExitCode::from(script::follow(&args).await);
    }
    ExitCode::from(interactive::run(&args).await)
}
