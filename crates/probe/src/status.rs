//! The probe's own state, shared by the reporter, the health endpoint and tests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use agentmesh_api::meshlogic::FileHook;

use crate::config::Tier;

#[derive(Debug)]
pub struct Status {
    tier: AtomicU32,
    requested: Tier,
    fallback_reason: Mutex<Option<String>>,
    programs_loaded: AtomicU32,
    file_hook: Mutex<(Option<FileHook>, Option<String>)>,
    ready: AtomicBool,
    ring_buffer_drops: AtomicU64,
    enforcement_version: Mutex<Option<String>>,
}

impl Status {
    pub fn new(requested: Tier) -> Self {
        Self {
            tier: AtomicU32::new(requested.number().into()),
            requested,
            fallback_reason: Mutex::new(None),
            programs_loaded: AtomicU32::new(0),
            file_hook: Mutex::new((None, None)),
            ready: AtomicBool::new(false),
            ring_buffer_drops: AtomicU64::new(0),
            enforcement_version: Mutex::new(None),
        }
    }

    pub fn set_tier(&self, tier: Tier, reason: Option<String>) {
        self.tier.store(tier.number().into(), Ordering::Relaxed);
        *self
            .fallback_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = reason;
    }

    pub fn tier(&self) -> u8 {
        self.tier.load(Ordering::Relaxed) as u8
    }

    pub fn requested(&self) -> Tier {
        self.requested
    }

    pub fn fallback_reason(&self) -> Option<String> {
        self.fallback_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_programs_loaded(&self, programs: u32) {
        self.programs_loaded.store(programs, Ordering::Relaxed);
    }

    pub fn programs_loaded(&self) -> u32 {
        self.programs_loaded.load(Ordering::Relaxed)
    }

    /// The hook observing file opens, and why it is not the cheaper one when that was wanted.
    pub fn set_file_hook(&self, hook: Option<FileHook>, note: Option<String>) {
        *self.file_hook.lock().unwrap_or_else(|e| e.into_inner()) = (hook, note);
    }

    pub fn file_hook(&self) -> Option<FileHook> {
        self.file_hook.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn file_hook_note(&self) -> Option<String> {
        (self.file_hook.lock().unwrap_or_else(|e| e.into_inner()).1).clone()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ring_buffer_drops(&self, drops: u64) {
        self.ring_buffer_drops.store(drops, Ordering::Relaxed);
    }

    pub fn ring_buffer_drops(&self) -> u64 {
        self.ring_buffer_drops.load(Ordering::Relaxed)
    }

    pub fn set_enforcement_version(&self, version: String) {
        *self
            .enforcement_version
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(version);
    }

    /// Version of the enforcement set in force in the kernel (tier 3).
    pub fn enforcement_version(&self) -> Option<String> {
        self.enforcement_version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "status": "ok",
            "tier": self.tier(),
            "requestedTier": self.requested.number(),
            "fallbackReason": self.fallback_reason(),
            "programsLoaded": self.programs_loaded(),
            "fileHook": self.file_hook(),
            "fileHookNote": self.file_hook_note(),
            "ready": self.is_ready(),
        })
        .to_string()
    }
}
