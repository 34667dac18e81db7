//! The run state machine (`docs/events-and-runs.md`), as pure code: which
//! command moves a run from which state to which, what is terminal, and
//! which runs hold their stack's lock.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Deploys: plans, may wait for confirmation, applies.
    Tracked,
    /// Previews: plans only.
    Proposed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Queued,
    Preparing,
    Planning,
    Unconfirmed,
    Confirmed,
    Applying,
    Finished,
    Failed,
    Canceled,
    Discarded,
}

pub const STATES: [State; 10] = [
    State::Queued,
    State::Preparing,
    State::Planning,
    State::Unconfirmed,
    State::Confirmed,
    State::Applying,
    State::Finished,
    State::Failed,
    State::Canceled,
    State::Discarded,
];

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Preparing => "preparing",
            Self::Planning => "planning",
            Self::Unconfirmed => "unconfirmed",
            Self::Confirmed => "confirmed",
            Self::Applying => "applying",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Discarded => "discarded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        STATES.into_iter().find(|state| state.as_str() == raw)
    }

    /// A run never leaves these.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Finished | Self::Failed | Self::Canceled | Self::Discarded
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can happen to a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// A worker took it: queued → preparing.
    Start,
    /// Checked out and initialised: preparing → planning.
    Plan,
    /// The plan is done; `changes` says whether it changes anything.
    Planned { changes: bool },
    /// A person confirmed the plan: unconfirmed → confirmed.
    Confirm,
    /// A person discarded the plan: unconfirmed → discarded.
    Discard,
    /// Applying begins: confirmed → applying.
    BeginApply,
    /// Applying succeeded: applying → finished.
    Applied,
    /// A phase failed, or the worker was lost.
    Fail,
    /// Stopped before anything was applied.
    Cancel,
    /// The worker shut down before the plan was done: back in the queue
    /// for another worker.
    HandBack,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {kind} run that is {from} cannot be {action}")]
pub struct IllegalTransition {
    pub kind: &'static str,
    pub from: State,
    pub action: &'static str,
}

impl Command {
    fn action(self) -> &'static str {
        match self {
            Self::Start => "started",
            Self::Plan => "planned",
            Self::Planned { .. } => "given a plan",
            Self::Confirm => "confirmed",
            Self::Discard => "discarded",
            Self::BeginApply => "applied",
            Self::Applied => "finished applying",
            Self::Fail => "failed",
            Self::Cancel => "canceled",
            Self::HandBack => "handed back",
        }
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracked => "tracked",
            Self::Proposed => "proposed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "tracked" => Some(Self::Tracked),
            "proposed" => Some(Self::Proposed),
            _ => None,
        }
    }
}

/// The state `command` moves a run of `kind` in `from` to. `autodeploy`
/// is the stack's setting: a tracked plan with changes then applies at
/// once instead of waiting for confirmation.
pub fn transition(
    kind: Kind,
    from: State,
    command: Command,
    autodeploy: bool,
) -> Result<State, IllegalTransition> {
    use State::*;
    let to = match (kind, from, command) {
        (_, Queued, Command::Start) => Some(Preparing),
        (_, Preparing, Command::Plan) => Some(Planning),
        (Kind::Proposed, Planning, Command::Planned { .. }) => Some(Finished),
        (Kind::Tracked, Planning, Command::Planned { changes: false }) => Some(Finished),
        (Kind::Tracked, Planning, Command::Planned { changes: true }) => {
            Some(if autodeploy { Applying } else { Unconfirmed })
        }
        (Kind::Tracked, Unconfirmed, Command::Confirm) => Some(Confirmed),
        (Kind::Tracked, Unconfirmed, Command::Discard) => Some(Discarded),
        (Kind::Tracked, Confirmed, Command::BeginApply) => Some(Applying),
        (Kind::Tracked, Applying, Command::Applied) => Some(Finished),
        (_, Queued | Preparing | Planning, Command::Cancel) => Some(Canceled),
        (_, Preparing | Planning, Command::HandBack) => Some(Queued),
        (_, state, Command::Fail) if !state.is_terminal() => Some(Failed),
        _ => None,
    };
    to.ok_or(IllegalTransition {
        kind: kind.as_str(),
        from,
        action: command.action(),
    })
}

/// Tracked runs of a stack run one at a time: a run in one of these
/// states holds the stack's lock (waiting for confirmation included).
pub fn holds_stack_lock(kind: Kind, state: State) -> bool {
    kind == Kind::Tracked && LOCKING.contains(&state)
}

/// The states in which a tracked run holds its stack's lock.
pub const LOCKING: [State; 5] = [
    State::Preparing,
    State::Planning,
    State::Unconfirmed,
    State::Confirmed,
    State::Applying,
];

/// The states in which a worker is executing the run, under a lease.
pub const EXECUTING: [State; 3] = [State::Preparing, State::Planning, State::Applying];

/// How long a run has executed by `now` (milliseconds), from its
/// transitions `(state, at)` in order: the time spent preparing, planning
/// and applying, in every attempt. Waiting in the queue or for
/// confirmation does not count; the run timeout is what is left of it.
pub fn executed_millis(transitions: &[(State, i64)], now: i64) -> i64 {
    let ends = transitions.iter().skip(1).map(|(_, at)| *at).chain([now]);
    transitions
        .iter()
        .zip(ends)
        .filter(|((state, _), _)| EXECUTING.contains(state))
        .map(|((_, start), end)| (end - start).max(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_for_confirmation_does_not_count_as_execution() {
        use State::*;
        let transitions = [
            (Queued, 0),
            (Preparing, 1_000),
            (Planning, 1_500),
            (Unconfirmed, 4_000),
            (Confirmed, 60_000),
            (Applying, 61_000),
        ];
        // 3 s preparing and planning, then 2 s applying so far.
        assert_eq!(executed_millis(&transitions, 63_000), 5_000);
        // An attempt handed back to the queue counts too.
        let retried = [
            (Queued, 0),
            (Preparing, 10),
            (Queued, 110),
            (Preparing, 500),
        ];
        assert_eq!(executed_millis(&retried, 600), 200);
        assert_eq!(executed_millis(&[], 5), 0);
    }

    const COMMANDS: [Command; 11] = [
        Command::Start,
        Command::Plan,
        Command::Planned { changes: false },
        Command::Planned { changes: true },
        Command::Confirm,
        Command::Discard,
        Command::BeginApply,
        Command::Applied,
        Command::Fail,
        Command::Cancel,
        Command::HandBack,
    ];

    #[test]
    fn the_happy_paths() {
        let tracked = |commands: &[Command], autodeploy| {
            commands.iter().try_fold(State::Queued, |state, c| {
                transition(Kind::Tracked, state, *c, autodeploy)
            })
        };
        let plan = [Command::Start, Command::Plan];
        let confirmed = [
            &plan[..],
            &[
                Command::Planned { changes: true },
                Command::Confirm,
                Command::BeginApply,
                Command::Applied,
            ],
        ]
        .concat();
        assert_eq!(tracked(&confirmed, false), Ok(State::Finished));
        let auto = [
            &plan[..],
            &[Command::Planned { changes: true }, Command::Applied],
        ]
        .concat();
        assert_eq!(tracked(&auto, true), Ok(State::Finished));
        let nothing = [&plan[..], &[Command::Planned { changes: false }]].concat();
        assert_eq!(tracked(&nothing, false), Ok(State::Finished));
        let discarded = [
            &plan[..],
            &[Command::Planned { changes: true }, Command::Discard],
        ]
        .concat();
        assert_eq!(tracked(&discarded, false), Ok(State::Discarded));
        let proposed = [&plan[..], &[Command::Planned { changes: true }]].concat();
        let end = proposed.iter().try_fold(State::Queued, |s, c| {
            transition(Kind::Proposed, s, *c, true)
        });
        assert_eq!(
            end,
            Ok(State::Finished),
            "proposed runs never apply, even with autodeploy"
        );
    }

    #[test]
    fn illegal_moves_say_what_was_refused() {
        let err = transition(Kind::Tracked, State::Applying, Command::Cancel, false)
            .expect_err("illegal");
        assert_eq!(
            err.to_string(),
            "a tracked run that is applying cannot be canceled"
        );
        assert!(transition(Kind::Proposed, State::Planning, Command::Confirm, false).is_err());
        assert!(transition(Kind::Tracked, State::Queued, Command::Confirm, false).is_err());
        assert!(
            transition(Kind::Tracked, State::Applying, Command::HandBack, false).is_err(),
            "an apply that began is never handed back: it would run twice"
        );
    }

    /// A property test: random command sequences on both kinds never reach
    /// a state the machine forbids for the kind, never leave a terminal
    /// state, and only a tracked run ever applies.
    #[test]
    fn random_sequences_respect_the_machine() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let kind = if next() % 2 == 0 {
                Kind::Tracked
            } else {
                Kind::Proposed
            };
            let autodeploy = next() % 2 == 0;
            let mut state = State::Queued;
            for _ in 0..12 {
                let command = COMMANDS[(next() % COMMANDS.len() as u64) as usize];
                match transition(kind, state, command, autodeploy) {
                    Ok(to) => {
                        assert!(!state.is_terminal(), "left terminal {state} by {command:?}");
                        if kind == Kind::Proposed {
                            assert!(!matches!(
                                to,
                                State::Unconfirmed
                                    | State::Confirmed
                                    | State::Applying
                                    | State::Discarded
                            ));
                        }
                        state = to;
                    }
                    Err(err) => assert_eq!(err.from, state),
                }
            }
        }
    }

    #[test]
    fn the_stack_lock() {
        assert!(holds_stack_lock(Kind::Tracked, State::Unconfirmed));
        assert!(!holds_stack_lock(Kind::Tracked, State::Queued));
        assert!(!holds_stack_lock(Kind::Tracked, State::Finished));
        assert!(!holds_stack_lock(Kind::Proposed, State::Planning));
        for state in STATES {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
    }
}
