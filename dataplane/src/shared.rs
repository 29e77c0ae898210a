//! What every core and the main thread share: the config generation in force, the
//! connection admission counters, the statistics and the shutdown flag. Created once
//! at start-up and leaked, so shards, sessions and the admin thread hold a plain
//! `&'static Shared` and none of them needs the engine that built it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use smtpgate_policy::config::Config;

use crate::admin::Health;
use crate::limits::Admission;
use crate::stats::{ListenerStats, Stats};
use crate::tls::TlsContext;

/// One loaded config with the counters of its listeners.
pub struct Generation {
    pub number: u64,
    pub config: Arc<Config>,
    /// `listeners[i]` counts `config.listeners[i]`.
    pub listeners: Vec<Arc<ListenerStats>>,
    /// The certificates and TLS configs this config named, read from their files.
    pub tls: Arc<TlsContext>,
}

/// State shared by all cores and the main thread (it lives as long as the process).
pub struct Shared {
    pub admission: Admission,
    pub stats: Stats,
    /// Shard heartbeats and readiness, for /healthz and /readyz.
    pub health: Health,
    current: RwLock<Arc<Generation>>,
    generation: AtomicU64,
    shutdown: AtomicBool,
}

impl Shared {
    /// The shared state for `config`, leaked: it is never freed.
    pub fn leak(config: Config, tls: Arc<TlsContext>) -> &'static Shared {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            admission: Admission::default(),
            stats: Stats::default(),
            health: Health::default(),
            current: RwLock::new(Arc::new(Generation {
                number: 0,
                config: Arc::new(config.clone()),
                listeners: Vec::new(),
                tls: tls.clone(),
            })),
            generation: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
        }));
        shared.install(config, tls);
        shared
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn generation_number(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Shards stop accepting and drain their sessions.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    /// Publishes a new config; new sessions pick it up on their next accept.
    pub fn install(&self, config: Config, tls: Arc<TlsContext>) {
        let number = self.generation_number() + 1;
        let listeners = self.stats.for_config(&config);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Generation {
            number,
            config: Arc::new(config),
            listeners,
            tls,
        });
        self.generation.store(number, Ordering::Release);
    }
}
