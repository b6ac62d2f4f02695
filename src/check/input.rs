//! The recordings as one stream of events: several files (several bench
//! processes of one run) merged by event time, each file's own order kept,
//! with client and thread numbers made global.

use crate::bench::record::{Event, ReadError, Reader};
use std::collections::HashMap;
use std::path::PathBuf;

/// An event with global numbers: `client` fields index [`Names::clients`],
/// `thread` fields index [`Names::threads`]. `Thread` events are consumed.
pub type Ev = Event;

/// The global names, built while streaming (identically on every pass).
#[derive(Debug, Default)]
pub struct Names {
    /// Global thread number -> thread id ("" is the main room). Threads of
    /// one name in several files are one thread.
    pub threads: Vec<String>,
    thread_ids: HashMap<String, u32>,
    /// Global client number -> (file, the file's client number).
    pub clients: Vec<(usize, u32)>,
    client_ids: HashMap<(usize, u32), u32>,
    /// Per file: its thread number -> the global one.
    file_threads: Vec<HashMap<u32, u32>>,
}

impl Names {
    fn client(&mut self, file: usize, c: u32) -> u32 {
        let next = self.clients.len() as u32;
        *self.client_ids.entry((file, c)).or_insert_with(|| {
            self.clients.push((file, c));
            next
        })
    }

    fn thread(&mut self, file: usize, t: u32) -> u32 {
        self.file_threads[file].get(&t).copied().unwrap_or(u32::MAX)
    }

    fn define_thread(&mut self, file: usize, index: u32, name: String) {
        let next = self.threads.len() as u32;
        let g = *self.thread_ids.entry(name.clone()).or_insert_with(|| {
            self.threads.push(name);
            next
        });
        self.file_threads[file].insert(index, g);
    }

    /// Makes `e`'s numbers global; `None` for a consumed `Thread` event.
    fn globalise(&mut self, file: usize, mut e: Event) -> Option<Event> {
        match &mut e {
            Event::Thread { index, name } => {
                self.define_thread(file, *index, std::mem::take(name));
                return None;
            }
            Event::Send { client, thread, .. } => {
                *client = self.client(file, *client);
                *thread = self.thread(file, *thread);
            }
            Event::Connect { client, .. }
            | Event::Update { client, .. }
            | Event::AckSent { client, .. }
            | Event::AckReply { client, .. }
            | Event::End { client, .. } => *client = self.client(file, *client),
            Event::Failover { from, to, .. } => {
                *from = self.client(file, *from);
                *to = self.client(file, *to);
            }
            Event::Meta(_) | Event::Status { .. } => {}
        }
        Some(e)
    }
}

/// The time an event is merged by; metadata first.
fn merge_time(e: &Event) -> i64 {
    match e {
        Event::Meta(_) | Event::Thread { .. } => i64::MIN,
        Event::Connect { time, .. }
        | Event::Send { time, .. }
        | Event::Status { time, .. }
        | Event::Update { time, .. }
        | Event::AckSent { time, .. }
        | Event::AckReply { time, .. }
        | Event::End { time, .. }
        | Event::Failover { time, .. } => *time,
    }
}

/// Streams every event of `files` through `f`, merged; returns the names.
/// `f` gets the event's position in the merged stream (0, 1, ...), which is
/// the same on every pass.
pub fn stream(
    files: &[PathBuf],
    mut f: impl FnMut(u64, usize, Ev),
) -> Result<Names, (PathBuf, ReadError)> {
    let mut readers = Vec::with_capacity(files.len());
    let mut heads = Vec::with_capacity(files.len());
    for p in files {
        let mut r = Reader::open(p).map_err(|e| (p.clone(), e))?;
        heads.push(r.next_event().map_err(|e| (p.clone(), e))?);
        readers.push(r);
    }
    let mut names = Names {
        file_threads: vec![HashMap::new(); files.len()],
        ..Names::default()
    };
    let mut pos = 0u64;
    loop {
        // A few files at most: a linear scan for the earliest head.
        let next = (0..heads.len())
            .filter_map(|i| heads[i].as_ref().map(|e| (merge_time(e), i)))
            .min();
        let Some((_, i)) = next else {
            return Ok(names);
        };
        let e = heads[i].take().expect("present");
        heads[i] = readers[i].next_event().map_err(|e| (files[i].clone(), e))?;
        if let Some(e) = names.globalise(i, e) {
            f(pos, i, e);
            pos += 1;
        }
    }
}
