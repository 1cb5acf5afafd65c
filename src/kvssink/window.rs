// SPDX-License-Identifier: MPL-2.0

//! Upload windows: which of the fragmenter's output goes to the uploader when kvssink does not upload
//! everything (`upload-mode=triggered`, or `paused`).
//!
//! The [`Gate`] sits between the [`Fragmenter`](super::fragmenter::Fragmenter) and the uploader. Each output
//! comes with the running time of the buffer that completed it. Outside a window, fragments are held (in RAM,
//! or on disk: below) for the pre-roll: the latest fragment that starts at or before `now - pre-roll` and every one after it,
//! bounded by a byte limit (what does not fit is dropped from the oldest end, counted, and reported with the
//! next window). A window opens at `trigger - pre-roll`: what is held from the last fragment start (a key frame:
//! matroskamux starts clusters at key frames) at or before that time goes out at once, in order, and the media
//! after it follows as it comes, until the window's end (`trigger end + post-roll`). The end is exact to the
//! frame: the frames of the last fragment from the end on are not sent, and that fragment ends when its cluster
//! does (a trigger that comes before then continues it, so that nothing is sent twice and the upload stays
//! continuous). Triggers that overlap or touch the open window extend it.
//!
//! `continuous` is a window that never ends; `paused` ends it at the time asked (no post-roll), and resuming
//! opens a new one with the pre-roll before it. Times are running times in nanoseconds (the element converts
//! wall-clock times); nothing here depends on GStreamer.
//!
//! With a fragment store (`on_disk`), the pre-roll is not held in memory: the gate gives the held fragments'
//! bytes out as [`Gated::HoldStart`] / [`Gated::HoldFrame`] / [`Gated::HoldEnd`], in stream order with what it
//! sends, for the element to write as held files; it keeps only their times and sizes, and later says which to
//! [discard](Gated::Discard) and which to [release](Gated::Release) to the uploader from their files.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use kvs_mkv::Rope;

use super::fragmenter::{FragmentStart, Output, StreamHeader};

/// What the gate gives, in order.
#[derive(Debug)]
pub enum Gated {
    /// For the uploader (and the store, when there is one).
    Send(Output),
    /// On disk: a held fragment `id` starts (write it to the store as held), its next frame, its end.
    HoldStart {
        id: u64,
        start: FragmentStart,
    },
    HoldFrame {
        data: Rope,
        duration: Duration,
    },
    HoldEnd,
    /// On disk: held fragment `id` is not needed any more (its file goes).
    Discard {
        id: u64,
    },
    /// On disk: held fragment `id` goes to the uploader from its file, its first `frames` frames (a window that
    /// ends inside it); `complete`: it ends there (else its next frames follow as [`Gated::Send`], to be
    /// written to the same file).
    Release {
        id: u64,
        header: Arc<StreamHeader>,
        timecode: u64,
        frames: usize,
        complete: bool,
    },
}

/// What asked for a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `trigger` action signal.
    Signal,
    /// A `kvs-trigger` event from upstream (or sent to the element).
    Event,
    /// The `trigger` property.
    Property,
    /// `upload-mode` back to `continuous`.
    Resume,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Signal => "signal",
            Source::Event => "event",
            Source::Property => "property",
            Source::Resume => "resume",
        }
    }
}

/// A window asked for: from `start - pre-roll` until `end` (None: until stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Request {
    source: Source,
    /// The trigger's running time.
    start: u64,
    /// Where the pre-roll starts (`start - pre-roll`).
    from: u64,
    /// Running time of the first frame that is not sent (`end + post-roll`); None: open.
    end: Option<u64>,
}

/// Media the pre-roll should have had but did not keep (the byte limit), or did not have (the trigger reached
/// back further than the media held).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeftOut {
    pub fragments: u64,
    pub frames: u64,
    pub bytes: u64,
    /// How much of the asked-for pre-roll is missing at its start.
    pub missing: Duration,
}

/// A window began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowStart {
    pub source: Source,
    /// The trigger's running time.
    pub trigger: u64,
    /// Running time of the first frame sent (a key frame), and its fragment's timecode.
    pub first: u64,
    pub timecode: u64,
    /// How much media before the trigger goes with it.
    pub pre_roll: Duration,
    pub left_out: LeftOut,
    /// When the window ends (None: open until stopped).
    pub end: Option<u64>,
}

/// A window ended: what it sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowEnd {
    pub fragments: u64,
    pub frames: u64,
    pub bytes: u64,
    /// Running times of its first and last frames.
    pub first: u64,
    pub last: u64,
    /// Triggers that extended it after it opened.
    pub extended: u64,
}

/// What the element hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Started(WindowStart),
    Ended(WindowEnd),
}

/// A fragment held for the pre-roll.
#[derive(Debug)]
struct Held {
    id: u64,
    header: Arc<StreamHeader>,
    timecode: u64,
    /// In memory: its start and later frames (none on disk).
    start: Option<FragmentStart>,
    frames: Vec<(Rope, Duration)>,
    /// Running time of its first frame, and of each frame with its size (the first included).
    running: u64,
    times: Vec<(u64, usize)>,
    complete: bool,
    bytes: usize,
}

/// Where the fragment being read goes.
#[derive(Debug, Default)]
enum Current {
    /// No fragment open.
    #[default]
    None,
    /// Sent, frame by frame.
    Sent,
    /// Held (the last of `held`).
    Held,
    /// Sent up to the window's end; the frames after it wait here in case a trigger continues the window
    /// before the fragment ends.
    Cut(Vec<(Rope, Duration, u64)>),
    /// Dropped (it did not fit in the pre-roll's byte limit).
    Dropped,
}

/// The open window.
#[derive(Debug)]
struct Window {
    end: Option<u64>,
    stats: WindowEnd,
    announce: bool,
    /// Nothing was held when it opened: it is announced with its first fragment.
    starting: Option<(Request, LeftOut)>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Gate {
    pre_roll: u64,
    post_roll: u64,
    max_bytes: usize,
    on_disk: bool,
    next_id: u64,
    held: VecDeque<Held>,
    held_bytes: usize,
    current: Current,
    window: Option<Window>,
    requests: Vec<Request>,
    /// Running time of the latest output.
    latest: u64,
    /// Fragments dropped by the byte limit since the last window opened: (running time, frames, bytes).
    dropped: VecDeque<(u64, u64, usize)>,
}

fn ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Gate {
    /// `open`: everything goes until [`pause`](Self::pause) (continuous mode); else nothing until a trigger.
    /// `on_disk`: the pre-roll goes to the fragment store (see the module documentation).
    pub fn new(
        open: bool,
        pre_roll: Duration,
        post_roll: Duration,
        max_bytes: usize,
        on_disk: bool,
    ) -> Self {
        Gate {
            pre_roll: ns(pre_roll),
            post_roll: ns(post_roll),
            max_bytes,
            on_disk,
            next_id: 0,
            held: VecDeque::new(),
            held_bytes: 0,
            current: Current::None,
            window: open.then(|| Window {
                end: None,
                stats: WindowEnd::default(),
                announce: false,
                starting: None,
            }),
            requests: Vec::new(),
            latest: 0,
            dropped: VecDeque::new(),
        }
    }

    pub fn set_rolls(&mut self, pre_roll: Duration, post_roll: Duration) {
        self.pre_roll = ns(pre_roll);
        self.post_roll = ns(post_roll);
    }

    /// True while a window is open (the uploader should keep its connection).
    pub fn is_open(&self) -> bool {
        self.window.is_some()
    }

    /// Bytes and fragments held for the pre-roll.
    pub fn held(&self) -> (usize, usize) {
        (self.held_bytes, self.held.len())
    }

    /// Running time of the latest output.
    pub fn latest(&self) -> u64 {
        self.latest
    }

    /// A trigger at `start` (running time), for `duration` (None: until [`stop`](Self::stop)); the window
    /// also takes the pre-roll before it and the post-roll after it.
    pub fn trigger(&mut self, source: Source, start: u64, duration: Option<Duration>) {
        let end = duration.map(|d| start.saturating_add(ns(d)).saturating_add(self.post_roll));
        let from = start.saturating_sub(self.pre_roll);
        self.request(Request {
            source,
            start,
            from,
            end,
        });
    }

    /// Ends the open-ended triggers at `at` (the post-roll follows).
    pub fn stop(&mut self, at: u64) {
        self.end_open(at.saturating_add(self.post_roll));
    }

    /// Uploading stops at `at` (no post-roll): what comes after is held for the pre-roll.
    pub fn pause(&mut self, at: u64) {
        self.end_open(at);
    }

    /// Uploading goes on from `at` (and its pre-roll) until paused.
    pub fn resume(&mut self, at: u64) {
        let from = at.saturating_sub(self.pre_roll);
        self.request(Request {
            source: Source::Resume,
            start: at,
            from,
            end: None,
        });
    }

    fn end_open(&mut self, end: u64) {
        if let Some(window) = &mut self.window
            && window.end.is_none()
        {
            window.end = Some(end);
        }
        for request in &mut self.requests {
            if request.end.is_none() {
                request.end = Some(end.max(request.from));
            }
        }
    }

    fn request(&mut self, request: Request) {
        // A window still open (or cut, its last fragment not ended yet) that this one touches or whose start has
        // been reached: extended (its last fragment continues).
        let latest = self.latest;
        if let Some(window) = &mut self.window
            && window.end.is_none_or(|end| request.from <= end.max(latest))
        {
            window.end = match (window.end, request.end) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            window.stats.extended += 1;
            return;
        }
        self.requests.push(request);
        self.requests.sort_by_key(|r| r.from);
        // Requests that overlap become one.
        let mut merged: Vec<Request> = Vec::with_capacity(self.requests.len());
        for request in self.requests.drain(..) {
            match merged.last_mut() {
                Some(last) if last.end.is_none_or(|end| request.from <= end) => {
                    last.end = match (last.end, request.end) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    };
                }
                _ => merged.push(request),
            }
        }
        self.requests = merged;
    }

    /// One output of the fragmenter, completed by a buffer at `running` (None: not known, the latest is used);
    /// what goes to the uploader is added to `out`, and what the application should hear to `notices`.
    pub fn push(
        &mut self,
        output: Output,
        running: Option<u64>,
        out: &mut Vec<Gated>,
        notices: &mut Vec<Notice>,
    ) {
        let running = running.unwrap_or(self.latest).max(self.latest);
        self.latest = running;
        // The fast path: an open window with no end (continuous mode).
        if matches!(
            &self.window,
            Some(Window {
                end: None,
                announce: false,
                ..
            })
        ) && matches!(self.current, Current::None | Current::Sent)
        {
            if let Output::FragmentStart(_) = &output {
                self.current = Current::Sent;
            }
            if let Output::FragmentEnd = &output {
                self.current = Current::None;
            }
            out.push(Gated::Send(output));
            return;
        }
        match output {
            Output::FragmentStart(start) => {
                if self
                    .window
                    .as_ref()
                    .is_some_and(|w| w.end.is_some_and(|end| running >= end))
                {
                    self.close(notices);
                }
                if let Some(window) = &mut self.window {
                    if let Some((request, left_out)) = window.starting.take() {
                        notices.push(started(request, left_out, running, start.timecode));
                    }
                    count(&mut window.stats, running, start.data.len(), true);
                    self.current = Current::Sent;
                    out.push(Gated::Send(Output::FragmentStart(start)));
                } else {
                    let (id, bytes) = (self.next_id, start.data.len());
                    self.next_id += 1;
                    self.held_bytes += bytes;
                    let mut held = Held {
                        id,
                        header: start.header.clone(),
                        timecode: start.timecode,
                        start: None,
                        frames: Vec::new(),
                        running,
                        times: vec![(running, bytes)],
                        complete: false,
                        bytes,
                    };
                    if self.on_disk {
                        out.push(Gated::HoldStart { id, start });
                    } else {
                        held.start = Some(start);
                    }
                    self.held.push_back(held);
                    self.current = Current::Held;
                }
            }
            Output::Frame { data, duration } => match &mut self.current {
                Current::Sent => {
                    let window = self
                        .window
                        .as_mut()
                        .expect("a sent fragment belongs to a window");
                    if window.end.is_some_and(|end| running >= end) {
                        self.current = Current::Cut(vec![(data, duration, running)]);
                    } else {
                        count(&mut window.stats, running, data.len(), false);
                        out.push(Gated::Send(Output::Frame { data, duration }));
                    }
                }
                Current::Held => {
                    let held = self.held.back_mut().expect("a held fragment");
                    held.bytes += data.len();
                    held.times.push((running, data.len()));
                    self.held_bytes += data.len();
                    if self.on_disk {
                        out.push(Gated::HoldFrame { data, duration });
                    } else {
                        held.frames.push((data, duration));
                    }
                }
                Current::Cut(tail) => {
                    tail.push((data, duration, running));
                    // A trigger continued the window: the frames after the cut go after all.
                    let window = self
                        .window
                        .as_mut()
                        .expect("a cut fragment belongs to a window");
                    if window.end.is_none_or(|end| running < end) {
                        let Current::Cut(tail) = std::mem::take(&mut self.current) else {
                            unreachable!()
                        };
                        for (data, duration, at) in tail {
                            count(&mut window.stats, at, data.len(), false);
                            out.push(Gated::Send(Output::Frame { data, duration }));
                        }
                        self.current = Current::Sent;
                    }
                }
                Current::None | Current::Dropped => {}
            },
            Output::FragmentEnd => match std::mem::take(&mut self.current) {
                Current::Sent => out.push(Gated::Send(Output::FragmentEnd)),
                Current::Held => {
                    if let Some(held) = self.held.back_mut() {
                        held.complete = true;
                    }
                    if self.on_disk {
                        out.push(Gated::HoldEnd);
                    }
                }
                Current::Cut(_) => {
                    out.push(Gated::Send(Output::FragmentEnd));
                    self.close(notices);
                }
                Current::None | Current::Dropped => {}
            },
            // A header and a time jump describe what follows: they go on at once (a log line, a warning).
            other => out.push(Gated::Send(other)),
        }
        self.open_due(running, out, notices);
        self.trim(out);
    }

    /// The input ended: the open window ends with it, and the pre-roll is not needed any more.
    pub fn finish(&mut self, out: &mut Vec<Gated>, notices: &mut Vec<Notice>) {
        if self.window.is_some() {
            self.close(notices);
        }
        while self.pop_held(out).is_some() {}
    }

    fn close(&mut self, notices: &mut Vec<Notice>) {
        if let Some(window) = self.window.take()
            && window.announce
        {
            notices.push(Notice::Ended(window.stats));
        }
        self.dropped.clear();
    }

    /// Opens the first requested window once the media reached its start, sending what is held from its
    /// pre-roll on.
    fn open_due(&mut self, running: u64, out: &mut Vec<Gated>, notices: &mut Vec<Notice>) {
        if self.window.is_some() {
            return;
        }
        let Some(request) = self.requests.first().copied() else {
            return;
        };
        if running < request.from {
            return;
        }
        self.requests.remove(0);
        // Where the window starts: the latest held fragment start at or before `from`, else the oldest.
        let index = self
            .held
            .iter()
            .rposition(|h| h.running <= request.from)
            .unwrap_or(0);
        for _ in 0..index {
            self.pop_held(out);
        }
        let mut left_out = LeftOut::default();
        for &(at, frames, bytes) in &self.dropped {
            if at >= request.from {
                left_out.fragments += 1;
                left_out.frames += frames;
                left_out.bytes += bytes as u64;
            }
        }
        self.dropped.clear();
        let mut window = Window {
            end: request.end,
            stats: WindowEnd::default(),
            announce: true,
            starting: None,
        };
        let Some(front) = self.held.front() else {
            // Nothing held: the window starts with the next fragment, and is announced then.
            window.starting = Some((request, left_out));
            self.window = Some(window);
            return;
        };
        notices.push(started(request, left_out, front.running, front.timecode));
        // What is held goes, up to the window's end (a window in the past ends inside what is held): a
        // fragment cut there ends at once, and what starts after the end stays held.
        let end = request.end;
        let mut releasing = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        let mut ended = false;
        while let Some(held) = releasing.pop_front() {
            if end.is_some_and(|end| held.running >= end) {
                releasing.push_front(held);
                break;
            }
            let sent = end.map_or(held.times.len(), |end| {
                held.times.iter().take_while(|t| t.0 < end).count()
            });
            let whole = sent == held.times.len();
            for &(at, size) in &held.times[..sent] {
                count(&mut window.stats, at, size, false);
            }
            window.stats.fragments += 1;
            let Some(start) = held.start else {
                // On disk: sent from its file, as far as the window goes.
                let complete = held.complete || !whole;
                let (id, header, timecode) = (held.id, held.header, held.timecode);
                out.push(Gated::Release {
                    id,
                    header,
                    timecode,
                    frames: sent,
                    complete,
                });
                if !whole {
                    // Its frames from the end on are not sent, nor the ones still to come.
                    self.current = if held.complete {
                        Current::None
                    } else {
                        Current::Dropped
                    };
                    ended = true;
                    break;
                }
                if !held.complete {
                    self.current = Current::Sent;
                }
                continue;
            };
            out.push(Gated::Send(Output::FragmentStart(start)));
            let mut frames = held.frames.into_iter();
            for (data, duration) in frames.by_ref().take(sent - 1) {
                out.push(Gated::Send(Output::Frame { data, duration }));
            }
            if !whole && !held.complete {
                // The fragment being read, cut: the rest waits in case a trigger continues the window.
                let tail = frames
                    .zip(&held.times[sent..])
                    .map(|((d, duration), t)| (d, duration, t.0))
                    .collect();
                self.current = Current::Cut(tail);
                break;
            }
            if held.complete || !whole {
                out.push(Gated::Send(Output::FragmentEnd));
            } else {
                // The fragment being read: its next frames are sent as they come.
                self.current = Current::Sent;
            }
            if !whole {
                ended = true;
                break;
            }
        }
        // What starts after the window's end stays held.
        self.held_bytes = releasing.iter().map(|h| h.bytes).sum();
        self.held = releasing;
        self.window = Some(window);
        // A window that ended inside what was held (or before what is being read) is over.
        let past = end.is_some_and(|end| end <= self.latest)
            && !matches!(self.current, Current::Sent | Current::Cut(_));
        if ended || past {
            self.close(notices);
        }
    }

    fn pop_held(&mut self, out: &mut Vec<Gated>) -> Option<Held> {
        let held = self.held.pop_front()?;
        self.held_bytes -= held.bytes;
        if self.held.is_empty() && matches!(self.current, Current::Held) {
            self.current = Current::Dropped;
        }
        if self.on_disk {
            out.push(Gated::Discard { id: held.id });
        }
        Some(held)
    }

    /// Keeps what the pre-roll (and the earliest requested window) needs, within the byte limit.
    fn trim(&mut self, out: &mut Vec<Gated>) {
        let mut horizon = self.latest.saturating_sub(self.pre_roll);
        if let Some(request) = self.requests.first() {
            horizon = horizon.min(request.from);
        }
        while self.held.len() >= 2 && self.held[1].running <= horizon {
            self.pop_held(out);
        }
        while self.held_bytes > self.max_bytes {
            let Some(held) = self.pop_held(out) else {
                break;
            };
            self.dropped
                .push_back((held.running, held.times.len() as u64, held.bytes));
        }
        while self.dropped.front().is_some_and(|&(at, _, _)| at < horizon) {
            self.dropped.pop_front();
        }
    }
}

fn started(request: Request, mut left_out: LeftOut, first: u64, timecode: u64) -> Notice {
    left_out.missing = Duration::from_nanos(first.saturating_sub(request.from));
    Notice::Started(WindowStart {
        source: request.source,
        trigger: request.start,
        first,
        timecode,
        pre_roll: Duration::from_nanos(request.start.saturating_sub(first)),
        left_out,
        end: request.end,
    })
}

fn count(stats: &mut WindowEnd, running: u64, bytes: usize, fragment: bool) {
    if stats.frames == 0 {
        stats.first = running;
    }
    stats.last = stats.last.max(running);
    stats.frames += 1;
    stats.bytes += bytes as u64;
    stats.fragments += u64::from(fragment);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvssink::fragmenter::StreamHeader;
    use bytes::Bytes;
    use std::sync::Arc;

    const SECOND: u64 = 1_000_000_000;
    /// 30 frames a second, a fragment (key frame) each second.
    const FPS: u64 = 30;

    fn frame_at(index: u64) -> u64 {
        index * SECOND / FPS
    }

    /// Pushes frames `from..to` of the stream (frame `i` carries `i` as its bytes) and returns the frame indices
    /// sent, with a marker for fragment starts and ends.
    struct Run {
        gate: Gate,
        header: Arc<StreamHeader>,
        sent: Vec<u64>,
        starts: Vec<u64>,
        ends: usize,
        notices: Vec<Notice>,
        /// What an on-disk gate asked to store, discard and release.
        ops: Vec<Gated>,
    }

    impl Run {
        fn new(gate: Gate) -> Self {
            let header = Arc::new(StreamHeader {
                generation: 1,
                bytes: Bytes::from_static(b"header"),
                timecode_scale: 1_000_000,
                media_type: None,
            });
            Run {
                gate,
                header,
                sent: Vec::new(),
                starts: Vec::new(),
                ends: 0,
                notices: Vec::new(),
                ops: Vec::new(),
            }
        }

        fn frames(&mut self, range: std::ops::Range<u64>) {
            for i in range {
                self.frame(i);
            }
        }

        fn frame(&mut self, i: u64) {
            let mut outputs = Vec::new();
            let data = Rope::from(Bytes::from(i.to_be_bytes().to_vec()));
            if i.is_multiple_of(FPS) {
                if i > 0 {
                    outputs.push(Output::FragmentEnd);
                }
                let start = FragmentStart {
                    header: self.header.clone(),
                    timecode: frame_at(i) / 1_000_000,
                    data,
                };
                outputs.push(Output::FragmentStart(start));
            } else {
                outputs.push(Output::Frame {
                    data,
                    duration: Duration::from_nanos(frame_at(i % FPS)),
                });
            }
            let mut out = Vec::new();
            for output in outputs {
                self.gate
                    .push(output, Some(frame_at(i)), &mut out, &mut self.notices);
            }
            for gated in out {
                let Gated::Send(output) = gated else {
                    self.ops.push(gated);
                    continue;
                };
                match output {
                    Output::FragmentStart(start) => {
                        let i = index(&start.data);
                        self.starts.push(i);
                        self.sent.push(i);
                    }
                    Output::Frame { data, .. } => self.sent.push(index(&data)),
                    Output::FragmentEnd => self.ends += 1,
                    _ => {}
                }
            }
        }
    }

    fn index(rope: &Rope) -> u64 {
        let mut bytes = [0u8; 8];
        rope.copy_prefix(&mut bytes);
        u64::from_be_bytes(bytes)
    }

    fn range(from: u64, to: u64) -> Vec<u64> {
        (from..to).collect()
    }

    #[test]
    fn a_trigger_sends_from_the_key_frame_before_its_pre_roll_to_its_end_plus_post_roll() {
        let mut run = Run::new(Gate::new(
            false,
            Duration::from_secs(5),
            Duration::from_secs(3),
            usize::MAX,
            false,
        ));
        run.frames(0..20 * FPS);
        assert!(run.sent.is_empty());
        // Pre-roll held: the fragment at or before 15 s minus 5 and the ones after it, nothing older.
        let (_, fragments) = run.gate.held();
        assert!(fragments <= 7, "{fragments} fragments held");
        run.gate
            .trigger(Source::Signal, 20 * SECOND, Some(Duration::from_secs(4)));
        run.frames(20 * FPS..40 * FPS);
        // From the key frame at 15 s to the last frame before 27 s, each once.
        assert_eq!(run.sent, range(15 * FPS, 27 * FPS));
        assert_eq!(run.starts, (15..27).map(|s| s * FPS).collect::<Vec<_>>());
        // The last fragment ended when its cluster did (at 28 s), and the window was reported.
        assert_eq!(run.ends, 12);
        let [Notice::Started(start), Notice::Ended(end)] = &run.notices[..] else {
            panic!("{:?}", run.notices)
        };
        assert_eq!(
            (start.source, start.trigger, start.first),
            (Source::Signal, 20 * SECOND, 15 * SECOND)
        );
        assert_eq!(start.pre_roll, Duration::from_secs(5));
        assert_eq!(start.left_out, LeftOut::default());
        assert_eq!(
            (end.frames, end.fragments, end.first, end.last),
            (12 * FPS, 12, 15 * SECOND, frame_at(27 * FPS - 1))
        );
    }

    #[test]
    fn an_open_trigger_runs_until_stopped_and_overlapping_triggers_extend_it_without_sending_twice()
    {
        let mut run = Run::new(Gate::new(
            false,
            Duration::from_secs(2),
            Duration::from_secs(1),
            usize::MAX,
            false,
        ));
        run.frames(0..10 * FPS);
        run.gate.trigger(Source::Event, 10 * SECOND, None);
        run.frames(10 * FPS..15 * FPS);
        // A second trigger inside the window, reaching back into it: the window goes on, nothing again.
        run.gate
            .trigger(Source::Signal, 14 * SECOND, Some(Duration::from_secs(1)));
        run.frames(15 * FPS..20 * FPS);
        run.gate.stop(20 * SECOND);
        run.frames(20 * FPS..30 * FPS);
        assert_eq!(run.sent, range(8 * FPS, 21 * FPS));
        let ended: Vec<_> = run
            .notices
            .iter()
            .filter(|n| matches!(n, Notice::Ended(_)))
            .collect();
        assert_eq!(ended.len(), 1);
        let Notice::Ended(end) = ended[0] else {
            unreachable!()
        };
        assert_eq!(end.extended, 1);
    }

    #[test]
    fn a_trigger_before_the_last_fragment_of_a_window_ended_continues_it() {
        let mut run = Run::new(Gate::new(
            false,
            Duration::from_secs(1),
            Duration::ZERO,
            usize::MAX,
            false,
        ));
        run.frames(0..5 * FPS);
        run.gate.trigger(
            Source::Signal,
            5 * SECOND,
            Some(Duration::from_millis(1500)),
        );
        // The window ends at 6.5 s, inside the fragment of 6 s; a trigger at 6.8 s comes before it ends.
        run.frames(5 * FPS..6 * FPS + 24);
        run.gate.trigger(
            Source::Signal,
            6 * SECOND + 800_000_000,
            Some(Duration::from_secs(1)),
        );
        run.frames(6 * FPS + 24..12 * FPS);
        assert_eq!(run.sent, range(4 * FPS, frame_index(7_800_000_000)));
        let ended = run
            .notices
            .iter()
            .filter(|n| matches!(n, Notice::Ended(_)))
            .count();
        assert_eq!(ended, 1);
    }

    fn frame_index(running: u64) -> u64 {
        (running * FPS).div_ceil(SECOND)
    }

    #[test]
    fn two_windows_apart_are_sent_apart_and_the_second_starts_at_its_own_pre_roll() {
        let mut run = Run::new(Gate::new(
            false,
            Duration::from_secs(5),
            Duration::from_secs(3),
            usize::MAX,
            false,
        ));
        run.frames(0..20 * FPS);
        run.gate
            .trigger(Source::Signal, 20 * SECOND, Some(Duration::from_secs(4)));
        run.frames(20 * FPS..40 * FPS);
        run.gate.trigger(Source::Property, 40 * SECOND, None);
        run.frames(40 * FPS..60 * FPS);
        let mut expected = range(15 * FPS, 27 * FPS);
        expected.extend(range(35 * FPS, 60 * FPS));
        assert_eq!(run.sent, expected);
        let starts: Vec<_> = run
            .notices
            .iter()
            .filter_map(|n| {
                if let Notice::Started(s) = n {
                    Some(s.first)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(starts, [15 * SECOND, 35 * SECOND]);
    }

    #[test]
    fn the_pre_roll_keeps_within_its_byte_limit_and_says_what_it_left_out() {
        // Each frame is 8 bytes: 240 bytes a fragment; a limit of 3 fragments.
        let mut run = Run::new(Gate::new(
            false,
            Duration::from_secs(10),
            Duration::ZERO,
            3 * 240,
            false,
        ));
        run.frames(0..30 * FPS);
        let (bytes, _) = run.gate.held();
        assert!(bytes <= 3 * 240, "{bytes} bytes held");
        run.gate
            .trigger(Source::Signal, 30 * SECOND, Some(Duration::from_secs(1)));
        run.frames(30 * FPS..35 * FPS);
        // The fragment in progress at 29 s was dropped (it did not fit); what was held goes, from 27 s.
        let [Notice::Started(start), ..] = &run.notices[..] else {
            panic!("{:?}", run.notices)
        };
        assert_eq!(start.first, 27 * SECOND);
        assert_eq!(start.left_out.missing, Duration::from_secs(7));
        assert!(start.left_out.fragments >= 7, "{:?}", start.left_out);
        assert_eq!(run.sent.first(), Some(&(27 * FPS)));
    }

    #[test]
    fn continuous_mode_sends_everything_and_pause_and_resume_cut_exactly() {
        let mut run = Run::new(Gate::new(
            true,
            Duration::ZERO,
            Duration::ZERO,
            usize::MAX,
            false,
        ));
        run.frames(0..10 * FPS);
        assert!(run.notices.is_empty());
        run.gate.pause(10 * SECOND + 500_000_000);
        run.frames(10 * FPS..20 * FPS);
        // Resumed at 20.5 s with no pre-roll: from the key frame at or before it (20 s).
        run.gate.resume(20 * SECOND + 500_000_000);
        run.frames(20 * FPS..25 * FPS);
        let mut expected = range(0, 10 * FPS + 15);
        expected.extend(range(20 * FPS, 25 * FPS));
        assert_eq!(run.sent, expected);
        assert!(!run.gate.is_open() || run.gate.held().1 == 0);
    }

    #[test]
    fn a_window_asked_for_before_any_media_starts_with_the_first_fragment() {
        let mut run = Run::new(Gate::new(
            false,
            Duration::from_secs(5),
            Duration::ZERO,
            usize::MAX,
            false,
        ));
        run.gate.trigger(Source::Property, 0, None);
        run.frames(0..3 * FPS);
        assert_eq!(run.sent, range(0, 3 * FPS));
        let [Notice::Started(start)] = &run.notices[..] else {
            panic!("{:?}", run.notices)
        };
        assert_eq!((start.first, start.left_out.missing), (0, Duration::ZERO));
    }

    #[test]
    fn on_disk_the_pre_roll_is_written_held_discarded_as_it_moves_on_and_released_from_its_files() {
        let mut run = Run::new(Gate::new(
            false,
            Duration::from_secs(2),
            Duration::ZERO,
            usize::MAX,
            true,
        ));
        run.frames(0..10 * FPS);
        // Nothing held in memory: every held fragment went out to be written, the old ones to be discarded.
        assert!(run.sent.is_empty());
        let starts = run
            .ops
            .iter()
            .filter(|o| matches!(o, Gated::HoldStart { .. }))
            .count();
        let frames = run
            .ops
            .iter()
            .filter(|o| matches!(o, Gated::HoldFrame { .. }))
            .count();
        let ends = run
            .ops
            .iter()
            .filter(|o| matches!(o, Gated::HoldEnd))
            .count();
        let discarded: Vec<u64> = run
            .ops
            .iter()
            .filter_map(|o| {
                if let Gated::Discard { id } = o {
                    Some(*id)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!((starts, frames, ends), (10, 10 * (FPS as usize - 1), 9));
        // At 9.97 s with a 2-s pre-roll, the fragments from 7 s on are kept.
        assert_eq!(discarded, (0..7).collect::<Vec<_>>());
        run.ops.clear();
        run.gate
            .trigger(Source::Signal, 10 * SECOND, Some(Duration::from_secs(1)));
        run.frames(10 * FPS..13 * FPS);
        // The fragments of 8 s and 9 s come from their files (complete), the next ones as they come.
        let released: Vec<(u64, u64, bool)> = run
            .ops
            .iter()
            .filter_map(|o| match o {
                Gated::Release {
                    id,
                    timecode,
                    complete,
                    ..
                } => Some((*id, *timecode, *complete)),
                _ => None,
            })
            .collect();
        assert_eq!(released, [(8, 8000, true), (9, 9000, true)]);
        assert_eq!(run.sent, range(10 * FPS, 11 * FPS));
        let [Notice::Started(start), Notice::Ended(end)] = &run.notices[..] else {
            panic!("{:?}", run.notices)
        };
        assert_eq!(start.first, 8 * SECOND);
        assert_eq!(
            (end.frames, end.fragments, end.last),
            (3 * FPS, 3, frame_at(11 * FPS - 1))
        );
        // At the end, what is still held goes.
        run.ops.clear();
        let mut out = Vec::new();
        run.gate.finish(&mut out, &mut run.notices);
        assert!(
            out.iter().all(|o| matches!(o, Gated::Discard { .. })) && !out.is_empty(),
            "{out:?}"
        );
    }

    #[test]
    fn a_window_in_the_past_ends_inside_what_is_held_and_what_comes_after_it_stays_held() {
        for on_disk in [false, true] {
            let mut run = Run::new(Gate::new(
                false,
                Duration::from_secs(2),
                Duration::ZERO,
                usize::MAX,
                on_disk,
            ));
            run.frames(0..10 * FPS);
            // Asked at 9.97 s for 8.2 s to 8.7 s: from the oldest fragment held (7 s; the pre-roll reaches 6.2 s)
            // to the last frame before 8.7 s; the window is over at once.
            run.gate.trigger(
                Source::Signal,
                8_200_000_000,
                Some(Duration::from_millis(500)),
            );
            run.ops.clear();
            run.frame(10 * FPS);
            let [Notice::Started(start), Notice::Ended(end)] = &run.notices[..] else {
                panic!("{:?}", run.notices)
            };
            assert_eq!(
                (start.first, start.left_out.missing),
                (7 * SECOND, Duration::from_millis(800))
            );
            assert_eq!(
                (end.frames, end.fragments, end.last),
                (51, 2, frame_at(8 * FPS + 20))
            );
            if on_disk {
                let released: Vec<(u64, usize, bool)> = run
                    .ops
                    .iter()
                    .filter_map(|o| match o {
                        Gated::Release {
                            timecode,
                            frames,
                            complete,
                            ..
                        } => Some((*timecode, *frames, *complete)),
                        _ => None,
                    })
                    .collect();
                assert_eq!(released, [(7000, 30, true), (8000, 21, true)]);
            } else {
                assert_eq!(run.sent, range(7 * FPS, 8 * FPS + 21));
                assert_eq!(run.ends, 2);
            }
            // The fragment of 9 s is still held, not sent; nothing more goes without a trigger.
            run.frames(10 * FPS + 1..12 * FPS);
            // (9 s, the one at or before 11.97 s - 2 s, and those after it.)
            assert_eq!(run.gate.held().1, 3);
            assert!(!run.gate.is_open());
        }
    }
}
