//! The messages an active worker has read and not committed yet, and the handler calls running
//! for them: no barrier at batch boundaries.
//!
//! ```text
//!   read ──admit──▶ [ done | running | queued | done | running | … ] ──finished prefix──▶ commit
//!                      ▲ lanes: one per chain (key), its messages one after another
//! ```
//! A message that needs no call (`forward`, `drop`, unrouted) is decided when admitted, unless
//! an earlier message of its chain is still running: it waits in its chain's lane. A message
//! that calls a handler starts once it is first in its lane and fewer than `max_in_flight`
//! calls run; the calls are tasks of their own, so they go on while the worker appends and
//! commits. The worker commits the longest finished prefix (in position order), so the cursor
//! only ever passes messages that are finished; the appends stay in position order per stream.
//!
//! A retry parks its chain here at once (`key`: the chain's later messages are blocked;
//! `strict`: nothing after it is reached); the worker parks the group's chains for good when
//! it records the failure.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use uuid::Uuid;

use super::dispatcher::{Dispatcher, Outcome};
use super::ordering::{Chain, OrderingMode, Parked};
use super::plan::Step;
use super::route::{Action, Route};
use crate::position::Position;
use crate::registry::RegistryError;
use crate::store::OutboxRow;

/// What a call task returns: the admission number of its message and the outcome.
type CallResult = (u64, Result<Outcome, RegistryError>);

pub(super) struct Window {
    dispatcher: Arc<Dispatcher>,
    slots: VecDeque<Slot>,
    /// The admission number of `slots[0]`.
    first_seq: u64,
    /// Per chain, its messages admitted and not decided yet, in position order; the first
    /// one runs (or waits in `ready` for a free call).
    lanes: HashMap<Chain, VecDeque<u64>>,
    /// Messages first in their lane, waiting for one of the `max_in_flight` calls: the oldest
    /// goes first, so the finished prefix (what a commit can take) grows as fast as it can.
    ready: BinaryHeap<Reverse<u64>>,
    calls: JoinSet<CallResult>,
    /// Chains a retry in the window parked: their later messages are blocked.
    parked: HashSet<Chain>,
    /// `strict`: a message is retrying; nothing after it is reached.
    halted: bool,
    /// The last position admitted (the next read starts after it).
    read_through: Option<Position>,
    /// Time spent validating payloads of messages decided on admission.
    decode_time: Duration,
}

struct Slot {
    row: OutboxRow,
    /// Its chain, when it was worked out (a message decided at once needs none).
    chain: Option<Chain>,
    calls_handler: bool,
    step: Option<Step>,
}

impl Window {
    pub fn new(dispatcher: Arc<Dispatcher>) -> Window {
        Window {
            dispatcher,
            slots: VecDeque::new(),
            first_seq: 0,
            lanes: HashMap::new(),
            ready: BinaryHeap::new(),
            calls: JoinSet::new(),
            parked: HashSet::new(),
            halted: false,
            read_through: None,
            decode_time: Duration::ZERO,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The last position admitted, if anything was since the last [`Window::reset`].
    pub fn read_through(&self) -> Option<Position> {
        self.read_through
    }

    /// `strict`: a retrying message stopped the group; reading more is pointless.
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// Drops everything: the calls are aborted, nothing of it is committed (the next read
    /// starts at the cursor again).
    pub fn reset(&mut self) {
        // Dropping the set aborts its tasks; a call that finished meanwhile is never seen.
        self.calls = JoinSet::new();
        // Admission numbers are never reused, so nothing stale can be taken for a new one.
        self.first_seq += self.slots.len() as u64;
        self.slots.clear();
        self.lanes.clear();
        self.ready.clear();
        self.parked.clear();
        self.halted = false;
        self.read_through = None;
    }

    /// Time spent validating payloads since the last call.
    pub fn take_decode_time(&mut self) -> Duration {
        std::mem::take(&mut self.decode_time)
    }

    /// Whether the first message is decided (a commit can take it).
    pub fn head_finished(&self) -> bool {
        self.slots.front().is_some_and(|slot| slot.step.is_some())
    }

    /// Admits `rows` (position order, after everything admitted): `recorded` have a delivery
    /// row already (left to the retry path); `parked` holds the group's parked chains.
    pub async fn admit(
        &mut self,
        rows: Vec<OutboxRow>,
        recorded: &HashSet<Uuid>,
        parked: &Parked,
    ) -> Result<(), RegistryError> {
        // Its routes are looked up once per message, here (a local handle: the window is
        // borrowed mutably below).
        let dispatcher = Arc::clone(&self.dispatcher);
        for row in rows {
            self.read_through = Some(row.position);
            let seq = self.first_seq + self.slots.len() as u64;
            let route = dispatcher.route(&row);
            let calls_handler = matches!(route.map(|r| &r.action), Some(Action::Call { .. }));
            // Left to the retry path, or `strict` stopped before it: decided as it comes in.
            let decided = if recorded.contains(&row.id) {
                Some(Step::Recorded)
            } else if self.halted {
                Some(Step::NotReached)
            } else if !dispatcher.owns(&row) {
                Some(Step::OtherPartition)
            } else {
                None
            };
            let undecided = decided.is_none();
            self.slots.push_back(Slot {
                row,
                chain: None,
                calls_handler,
                step: decided,
            });
            if !undecided {
                continue;
            }
            // The common case — nothing parked, nothing waiting, no call needed — is decided
            // at once, without working out the message's chain.
            if !calls_handler
                && self.lanes.is_empty()
                && parked.is_empty()
                && self.parked.is_empty()
            {
                self.decide_now(seq, route).await?;
                continue;
            }
            let chain = self
                .dispatcher
                .ordering
                .chain(seq as usize, &self.slot(seq).row);
            self.slot_mut(seq).chain = Some(chain.clone());
            if parked.holds(&chain) || self.parked.contains(&chain) {
                self.slot_mut(seq).step = Some(self.waiting_step());
                continue;
            }
            match self.lanes.get_mut(&chain) {
                Some(lane) => lane.push_back(seq),
                None if calls_handler => {
                    self.lanes.insert(chain, VecDeque::from([seq]));
                    self.start(seq);
                }
                None => self.decide_now(seq, route).await?,
            }
        }
        Ok(())
    }

    /// Folds in the calls that finished, without waiting.
    pub async fn collect_finished(&mut self) -> Result<(), RegistryError> {
        while let Some(joined) = self.calls.try_join_next() {
            self.finished(joined).await?;
        }
        Ok(())
    }

    /// Waits for the next call to finish and folds it in; false when none runs.
    pub async fn next_finished(&mut self) -> Result<bool, RegistryError> {
        match self.calls.join_next().await {
            Some(joined) => {
                self.finished(joined).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Takes the decided messages at the front, at most `max`, with their steps (the caller
    /// commits them, recording the chains they park in the group's parked keys).
    pub fn take_finished(&mut self, max: usize) -> (Vec<OutboxRow>, Vec<Step>) {
        let mut rows = Vec::new();
        let mut steps = Vec::new();
        while rows.len() < max && self.head_finished() {
            let slot = self.slots.pop_front().expect("a finished head");
            self.first_seq += 1;
            rows.push(slot.row);
            steps.push(slot.step.expect("finished"));
        }
        if self.slots.is_empty() {
            // What it parked is recorded with this commit and mirrored by the group's parked
            // keys from then on, which only the retry pass releases (never while the window
            // holds anything).
            self.parked.clear();
            self.halted = false;
        }
        (rows, steps)
    }

    /// Parks `chains` in the window: their messages not committed yet are blocked, whatever
    /// their calls (still running, or done) return — a commit found an earlier message of
    /// theirs failing (e.g. its stream key is not a stream). `strict` (the group is one
    /// chain) halts the window.
    pub fn park(&mut self, chains: &[Chain]) {
        let ordering = self.dispatcher.ordering;
        // Nothing here to hold back: the group's parked keys hold the chains from now on.
        if ordering == OrderingMode::None || self.slots.is_empty() {
            return;
        }
        // A chain a retry parked here already has its later messages held back (and the
        // retrying message itself must stay as it is); a message alone parks nothing.
        let newly: HashSet<&Chain> = chains
            .iter()
            .filter(|chain| !matches!(chain, Chain::Own(_)) && !self.parked.contains(*chain))
            .collect();
        if newly.is_empty() {
            return;
        }
        for chain in &newly {
            self.parked.insert((*chain).clone());
            self.lanes.remove(*chain);
        }
        self.halted |= ordering == OrderingMode::Strict;
        let waiting = self.waiting_step();
        let first_seq = self.first_seq;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let chain = slot
                .chain
                .get_or_insert_with(|| ordering.chain((first_seq + i as u64) as usize, &slot.row));
            if newly.contains(chain) && !matches!(slot.step, Some(Step::Recorded)) {
                slot.step = Some(waiting.clone());
            }
        }
        let slots = &self.slots;
        self.ready
            .retain(|Reverse(seq)| slots[(seq - first_seq) as usize].step.is_none());
    }

    /// How a message held back by its parked chain ends this pass.
    fn waiting_step(&self) -> Step {
        match self.dispatcher.ordering {
            OrderingMode::Strict => Step::NotReached,
            _ => Step::Blocked,
        }
    }

    fn slot(&self, seq: u64) -> &Slot {
        &self.slots[(seq - self.first_seq) as usize]
    }

    fn slot_mut(&mut self, seq: u64) -> &mut Slot {
        &mut self.slots[(seq - self.first_seq) as usize]
    }

    /// Decides a message that calls no handler: validate it, then forward/drop/skip.
    async fn decide_now(&mut self, seq: u64, route: Option<&Route>) -> Result<(), RegistryError> {
        let decoding = Instant::now();
        let slot = self.slot(seq);
        let decoded = self.dispatcher.decode(&slot.row).await?;
        let decode_time = decoding.elapsed();
        let outcome = self
            .dispatcher
            .handle_routed(&slot.row, route, 1, decoded)
            .await;
        self.decode_time += decode_time;
        self.slot_mut(seq).step = Some(Step::Handled(outcome));
        Ok(())
    }

    /// Queues `seq`'s call and starts the oldest waiting ones while calls are free.
    fn start(&mut self, seq: u64) {
        self.ready.push(Reverse(seq));
        self.fill();
    }

    /// Starts the oldest waiting calls while fewer than `max_in_flight` run.
    fn fill(&mut self) {
        while self.calls.len() < self.dispatcher.max_in_flight
            && let Some(Reverse(seq)) = self.ready.pop()
        {
            self.spawn(seq);
        }
    }

    fn spawn(&mut self, seq: u64) {
        let dispatcher = Arc::clone(&self.dispatcher);
        let row = self.slot(seq).row.clone();
        self.calls.spawn(async move {
            let outcome = match dispatcher.decode(&row).await {
                Ok(decoded) => Ok(dispatcher.handle(&row, 1, decoded).await),
                Err(error) => Err(error),
            };
            (seq, outcome)
        });
    }

    /// Folds in one finished call: its message is decided, and its lane moves on (or, after
    /// a retry, its chain is parked).
    async fn finished(
        &mut self,
        joined: Result<CallResult, tokio::task::JoinError>,
    ) -> Result<(), RegistryError> {
        let (seq, outcome) = match joined {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Aborted: nothing of it is in the window any more.
            Err(_) => return Ok(()),
        };
        let in_window = seq >= self.first_seq && seq < self.first_seq + self.slots.len() as u64;
        // Decided already (and maybe committed) when its chain was parked by a commit.
        if in_window && self.slot(seq).step.is_none() {
            let outcome = outcome?;
            let retrying = matches!(outcome, Outcome::Retry { .. });
            let slot = self.slot_mut(seq);
            slot.step = Some(Step::Handled(outcome));
            let chain = slot.chain.clone().expect("a call's chain is known");
            if retrying && self.dispatcher.ordering != OrderingMode::None {
                self.park_after_retry(&chain);
            } else {
                self.advance(&chain, seq).await?;
            }
        }
        // Its call is free for the oldest message waiting.
        self.fill();
        Ok(())
    }

    /// A message of `chain` is retrying: the chain's later messages here are held back
    /// (`key`: blocked; `strict`: not reached, and nothing after them either).
    fn park_after_retry(&mut self, chain: &Chain) {
        self.parked.insert(chain.clone());
        self.halted |= self.dispatcher.ordering == OrderingMode::Strict;
        let waiting = self.waiting_step();
        if let Some(mut lane) = self.lanes.remove(chain) {
            lane.pop_front();
            for seq in lane {
                self.slot_mut(seq).step = Some(waiting.clone());
            }
        }
    }

    /// `done` of `chain` is decided: decide the lane's next messages that need no call, and
    /// start the next call.
    async fn advance(&mut self, chain: &Chain, done: u64) -> Result<(), RegistryError> {
        let Some(lane) = self.lanes.get_mut(chain) else {
            return Ok(());
        };
        if lane.front() == Some(&done) {
            lane.pop_front();
        }
        while let Some(&next) = self.lanes.get(chain).and_then(|lane| lane.front()) {
            if self.slot(next).calls_handler {
                self.start(next);
                return Ok(());
            }
            let dispatcher = Arc::clone(&self.dispatcher);
            self.decide_now(next, dispatcher.route(&self.slot(next).row))
                .await?;
            if let Some(lane) = self.lanes.get_mut(chain) {
                lane.pop_front();
            }
        }
        self.lanes.remove(chain);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::plan::tests::{dispatcher, row};

    fn names(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .map(|step| match step {
                Step::Recorded => "recorded",
                Step::Blocked => "blocked",
                Step::NotReached => "not reached",
                Step::OtherPartition => "other partition",
                Step::Handled(Outcome::Retry { .. }) => "retry",
                Step::Handled(Outcome::Dead { .. }) => "dead",
                Step::Handled(Outcome::Delivered(_)) => "delivered",
                Step::Handled(Outcome::Skipped(_)) => "skipped",
            })
            .collect()
    }

    async fn finish_all(window: &mut Window) {
        while window.next_finished().await.unwrap() {}
    }

    #[tokio::test]
    async fn a_commit_parks_new_chains_only_and_leaves_a_retrying_message_as_it_is() {
        let mut window = Window::new(Arc::new(dispatcher(OrderingMode::Key)));
        let rows = vec![
            row(1, "call", Some("a"), "fail"),
            row(2, "call", Some("b"), "fail"),
            row(3, "call", Some("b"), "ok"),
            row(4, "call", Some("c"), "ok"),
            row(5, "fwd", Some("d"), "ok"),
        ];
        window
            .admit(rows, &HashSet::new(), &Parked::default())
            .await
            .unwrap();
        finish_all(&mut window).await;
        let (_, first) = window.take_finished(1);
        assert_eq!(names(&first), ["retry"]);
        // The commit of message 1 parks key a; b was parked here by message 2 already.
        window.park(&[Chain::Key("a".into()), Chain::Key("b".into())]);
        let (_, rest) = window.take_finished(usize::MAX);
        assert_eq!(names(&rest), ["retry", "blocked", "delivered", "delivered"]);
    }

    #[tokio::test]
    async fn a_chain_parked_by_a_commit_blocks_its_later_messages_even_when_handled() {
        let mut window = Window::new(Arc::new(dispatcher(OrderingMode::Key)));
        let rows = vec![
            row(1, "call", Some("a"), "ok"),
            row(2, "call", Some("a"), "ok"),
            row(3, "fwd", Some("b"), "ok"),
            row(4, "call", None, "ok"),
        ];
        window
            .admit(rows, &HashSet::new(), &Parked::default())
            .await
            .unwrap();
        finish_all(&mut window).await;
        let (_, first) = window.take_finished(1);
        assert_eq!(names(&first), ["delivered"]);
        // Message 1's entry could not be appended (a stream key of the wrong type): key a is
        // parked, and message 2 waits although its call is done; the keyless one parks nothing.
        window.park(&[Chain::Key("a".into()), Chain::Own(0)]);
        let (_, rest) = window.take_finished(usize::MAX);
        assert_eq!(names(&rest), ["blocked", "delivered", "delivered"]);
        assert!(window.is_empty());
    }

    #[tokio::test]
    async fn strict_stops_at_a_retry_and_max_in_flight_holds_the_rest_back() {
        let mut window = Window::new(Arc::new(dispatcher(OrderingMode::Strict)));
        let rows = vec![
            row(1, "call", Some("a"), "ok"),
            row(2, "call", Some("b"), "fail"),
            row(3, "call", Some("c"), "ok"),
            row(4, "fwd", Some("d"), "ok"),
        ];
        window
            .admit(rows, &HashSet::new(), &Parked::default())
            .await
            .unwrap();
        assert_eq!(window.calls.len(), 1, "strict: one call at a time");
        finish_all(&mut window).await;
        assert!(window.is_halted());
        window
            .admit(
                vec![row(5, "fwd", Some("e"), "ok")],
                &HashSet::new(),
                &Parked::default(),
            )
            .await
            .unwrap();
        let (_, steps) = window.take_finished(usize::MAX);
        assert_eq!(
            names(&steps),
            [
                "delivered",
                "retry",
                "not reached",
                "not reached",
                "not reached"
            ]
        );

        let mut window = Window::new(Arc::new(
            dispatcher(OrderingMode::Key).with_max_in_flight(2),
        ));
        let rows = (1..=5).map(|n| row(n, "call", None, "ok")).collect();
        window
            .admit(rows, &HashSet::new(), &Parked::default())
            .await
            .unwrap();
        assert_eq!((window.calls.len(), window.ready.len()), (2, 3));
        finish_all(&mut window).await;
        let (_, steps) = window.take_finished(usize::MAX);
        assert_eq!(names(&steps), ["delivered"; 5]);
    }

    #[tokio::test]
    async fn a_reset_forgets_calls_that_finish_afterwards() {
        let mut window = Window::new(Arc::new(dispatcher(OrderingMode::Key)));
        let admit = |n| vec![row(n, "call", Some("a"), "ok")];
        window
            .admit(admit(1), &HashSet::new(), &Parked::default())
            .await
            .unwrap();
        window.reset();
        assert!(window.is_empty() && window.read_through().is_none());
        window
            .admit(admit(2), &HashSet::new(), &Parked::default())
            .await
            .unwrap();
        finish_all(&mut window).await;
        let (rows, steps) = window.take_finished(usize::MAX);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].position.seq, 2);
        assert_eq!(names(&steps), ["delivered"]);
    }
}
