//! The controller's balloon actions, as Firecracker answers them: `PUT /balloon` before boot
//! (checked against the machine's memory and what the device supports), `GET /balloon` in
//! every state, `PATCH /balloon` after boot (the running device's new target, which the
//! driver hears of by a configuration change interrupt), `GET /balloon/statistics` and
//! `PATCH /balloon/statistics` after boot (the latest values; a new polling interval), and
//! the free page hinting routes after boot (`PATCH /balloon/hinting/start|stop`,
//! `GET /balloon/hinting/status`), whose errors Firecracker reports as balloon update errors.

use super::Controller;
use crate::devices::virtio::balloon::{
    Balloon, BalloonConfig, BalloonError, BalloonStatsUpdate, BalloonUpdate,
};
use crate::vmm::action::{ActionError, ActionResult, VmmData};

impl Controller {
    /// The guest's memory size in MiB, the most a balloon may take.
    fn balloon_limit_mib(&self) -> u32 {
        u32::try_from(self.resources.machine_config.mem_size_mib).unwrap_or(u32::MAX)
    }

    /// `PUT /balloon` before boot: checked, then recorded; the device is made at boot.
    pub(super) fn put_balloon(&mut self, config: BalloonConfig) -> ActionResult {
        config
            .check_fits(self.resources.machine_config.mem_size_mib)
            .map_err(ActionError::Balloon)?;
        self.resources.balloon = Some(config);
        Ok(VmmData::Empty)
    }

    /// `GET /balloon`: the running device's configuration, or the recorded one before boot.
    pub(super) fn get_balloon(&self) -> ActionResult {
        let config = match (&self.running, self.devices.balloon()) {
            (Some(_), Some(device)) => Some(device.config()),
            _ => self.resources.balloon.clone(),
        };
        config
            .map(VmmData::Balloon)
            .ok_or(ActionError::Balloon(BalloonError::NotFound))
    }

    /// `PATCH /balloon` after boot: the device's new target.
    pub(super) fn patch_balloon(&mut self, update: &BalloonUpdate) -> ActionResult {
        let limit = self.balloon_limit_mib();
        let mut device = self
            .devices
            .balloon()
            .ok_or(ActionError::BalloonUpdate(BalloonError::NotFound))?;
        device
            .set_target_mib(update.amount_mib, limit)
            .map_err(ActionError::BalloonUpdate)?;
        drop(device);
        if let Some(config) = self.resources.balloon.as_mut() {
            config.amount_mib = update.amount_mib;
        }
        Ok(VmmData::Empty)
    }

    /// `GET /balloon/statistics` after boot: the latest values.
    pub(super) fn balloon_stats(&self) -> ActionResult {
        let device = self
            .devices
            .balloon()
            .ok_or(ActionError::BalloonRuntime(BalloonError::NotFound))?;
        device
            .latest_stats()
            .map(VmmData::BalloonStats)
            .map_err(ActionError::BalloonRuntime)
    }

    /// `PATCH /balloon/hinting/start|stop` after boot: `change` on the device.
    pub(super) fn balloon_hinting(
        &mut self,
        change: impl FnOnce(&mut Balloon) -> Result<(), BalloonError>,
    ) -> ActionResult {
        let mut device = self
            .devices
            .balloon()
            .ok_or(ActionError::BalloonUpdate(BalloonError::NotFound))?;
        change(&mut device).map_err(ActionError::BalloonUpdate)?;
        Ok(VmmData::Empty)
    }

    /// `GET /balloon/hinting/status` after boot.
    pub(super) fn balloon_hinting_status(&self) -> ActionResult {
        self.devices
            .balloon()
            .ok_or(ActionError::BalloonUpdate(BalloonError::NotFound))?
            .hinting_status()
            .map(VmmData::BalloonHinting)
            .map_err(ActionError::BalloonUpdate)
    }

    /// `PATCH /balloon/statistics` after boot: a new polling interval (statistics cannot be
    /// turned on or off after boot).
    pub(super) fn patch_balloon_stats(&mut self, update: &BalloonStatsUpdate) -> ActionResult {
        let seconds = update.stats_polling_interval_s;
        self.devices
            .balloon()
            .ok_or(ActionError::BalloonUpdate(BalloonError::NotFound))?
            .set_stats_interval(seconds)
            .map_err(ActionError::BalloonUpdate)?;
        if let Some(config) = self.resources.balloon.as_mut() {
            config.stats_polling_interval_s = seconds;
        }
        Ok(VmmData::Empty)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::super::tests::controller;
    use super::*;
    use crate::vmm::action::VmmAction;

    fn put(c: &mut Controller, body: serde_json::Value) -> ActionResult {
        c.handle(VmmAction::PutBalloon(serde_json::from_value(body).unwrap()))
    }

    fn fault(result: ActionResult) -> String {
        result.unwrap_err().fault_message()
    }

    #[test]
    fn a_put_balloon_is_answered_by_get_with_firecrackers_body() {
        let mut c = controller();
        assert_eq!(
            fault(c.handle(VmmAction::GetBalloon)),
            "Balloon config error: No balloon device found."
        );
        put(&mut c, json!({"amount_mib": 1, "deflate_on_oom": false})).unwrap();
        let VmmData::Balloon(config) = c.handle(VmmAction::GetBalloon).unwrap() else {
            panic!("GET /balloon answered no balloon");
        };
        assert_eq!(
            serde_json::to_string(&config).unwrap(),
            r#"{"amount_mib":1,"deflate_on_oom":false,"stats_polling_interval_s":0,"free_page_hinting":false,"free_page_reporting":false}"#
        );
    }

    #[test]
    fn a_balloon_larger_than_memory_is_refused_and_every_feature_is_recorded() {
        let mut c = controller();
        assert_eq!(
            fault(put(
                &mut c,
                json!({"amount_mib": 100000, "deflate_on_oom": true})
            )),
            "Balloon config error: Amount of pages requested is too large."
        );
        assert!(c.resources.balloon.is_none(), "nothing refused is recorded");
        let body = json!({"amount_mib": 1, "deflate_on_oom": true, "free_page_hinting": true,
                          "free_page_reporting": true, "stats_polling_interval_s": 1});
        put(&mut c, body).unwrap();
        let recorded = c.resources.balloon.unwrap();
        assert!(recorded.free_page_hinting && recorded.free_page_reporting);
    }

    #[test]
    fn balloon_updates_and_statistics_are_refused_before_boot() {
        let mut c = controller();
        put(&mut c, json!({"amount_mib": 1, "deflate_on_oom": false})).unwrap();
        let before = "The requested operation is not supported before starting the microVM.";
        let patch =
            VmmAction::PatchBalloon(serde_json::from_value(json!({"amount_mib": 2})).unwrap());
        assert_eq!(fault(c.handle(patch)), before);
        assert_eq!(fault(c.handle(VmmAction::GetBalloonStats)), before);
        for action in [
            VmmAction::StartBalloonHinting(Default::default()),
            VmmAction::StopBalloonHinting,
            VmmAction::GetBalloonHintingStatus,
        ] {
            assert_eq!(fault(c.handle(action)), before);
        }
    }
}
