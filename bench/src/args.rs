//! The command line of `csw-bench`: the scenario and its knobs.

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Raw broker ceiling, worker drain, RSS, requests per change, latency.
    Throughput,
    /// Slow simulated jobs and a rate limit: drain time against the simulator's limit.
    ApiBound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// Change i goes to calendar i mod C (calendars interleaved).
    Interleaved,
    /// All of one calendar's changes, then the next calendar's.
    CalendarMajor,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Scenario::Throughput)]
    pub scenario: Scenario,
    /// Changes (and raw messages) to drain [throughput: 200000, --quick 20000; api-bound: 20000].
    #[arg(long)]
    pub changes: Option<usize>,
    /// A small run (20,000 changes, a 3 s latency phase): what the README example uses.
    #[arg(long)]
    pub quick: bool,
    /// Calendars the changes are spread over [throughput: 100; api-bound: 40].
    #[arg(long)]
    pub calendars: Option<usize>,
    /// Publish order of the pre-filled changes [throughput: interleaved; api-bound: calendar-major].
    #[arg(long, value_enum)]
    pub order: Option<Order>,
    /// `imports.max_concurrent` for the worker [throughput: 16; api-bound: 3].
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// `amqp.prefetch` for the worker [throughput: interleaved calendars × batch.max_entries, calendar-major batch.max_entries × (max_concurrent + 1), at most 65535; api-bound: derived].
    #[arg(long)]
    pub prefetch: Option<u16>,
    /// `worker.threads` for the worker: 1 leaves the other core of a small
    /// machine to the broker it shares; 0 means one per CPU core.
    #[arg(long, default_value_t = 1)]
    pub worker_threads: u16,
    /// `amqp.ack_chunk` for the worker: most deliveries one `multiple` ack
    /// covers once the ack pace goes to chunks; 0 acks every settled front
    /// whole, without probes [the worker's setting, 5000 by default].
    #[arg(long)]
    pub ack_chunk: Option<u32>,
    /// Steady publish rate of the latency phase, changes per second.
    #[arg(long, default_value_t = 1000.0)]
    pub latency_rate: f64,
    /// Length of the latency phase in seconds [10; --quick 3].
    #[arg(long)]
    pub latency_seconds: Option<f64>,
    /// Skip the raw-ceiling measurement (throughput only).
    #[arg(long)]
    pub skip_raw: bool,
    /// Leave the local broker's quorum-queue log as it is. By default, when
    /// the broker runs here and `rabbitmqctl` works, its write-ahead log is
    /// rolled over before each pre-fill, so that every drain reads its
    /// messages from memory: a roll-over (every 512 MB written) that lands
    /// mid-pre-fill moves them to segment files, and the drain then costs
    /// the broker about half as much again, whether raw or worker.
    #[arg(long)]
    pub no_wal_roll: bool,
    /// Write the changes' fields in sorted order (as a `serde_json::Value`
    /// does) instead of the contract's: the worker then parses each body
    /// again to build its import, instead of copying the entries' bytes.
    #[arg(long)]
    pub sorted_keys: bool,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
}

impl Order {
    /// The name the report gives the order.
    pub fn name(self) -> &'static str {
        match self {
            Order::Interleaved => "interleaved",
            Order::CalendarMajor => "calendar-major",
        }
    }
}
