//! The leaderboard vocabulary every tier shares: periods, the dated boards an event counts
//! toward, the score rule, and the top-N snapshot written to `leaderboards`.

use super::GameEvent;
use chrono::{DateTime, Datelike, Duration as Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// The largest score one event may add; far below 2^53, where Redis's doubles stop being exact.
pub const MAX_SCORE: i64 = 1_000_000_000;

/// A board's period. `Daily` and `Weekly` name the current day's and week's boards; a past one is
/// a [`Board::Dated`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Daily,
    Weekly,
    Alltime,
}

impl Period {
    /// Every period a game has a current board for.
    pub const ALL: [Period; 3] = [Period::Daily, Period::Weekly, Period::Alltime];

    /// The name used in keys, the `leaderboards.period` column and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Alltime => "alltime",
        }
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One board of a game: a period's current board, or a past day's or week's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Board {
    Current(Period),
    /// `Daily` with `2024-01-15`, or `Weekly` with `2024-W03`.
    Dated(Period, String),
}

impl Board {
    /// The period this board belongs to.
    pub fn period(&self) -> Period {
        match self {
            Board::Current(p) | Board::Dated(p, _) => *p,
        }
    }

    /// How the API names it: `alltime`, `daily`, or `daily:2024-01-15`.
    pub fn name(&self) -> String {
        match self {
            Board::Current(p) => p.as_str().to_owned(),
            Board::Dated(p, stamp) => format!("{p}:{stamp}"),
        }
    }
}

/// The dated boards an event counts toward, and when they expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPeriods {
    /// `YYYY-MM-DD` of the event's UTC day.
    pub day: String,
    /// Unix time the day's dated board expires: the day's end plus the retention.
    pub day_expires_at: i64,
    /// `YYYY-Www` of the event's ISO week.
    pub week: String,
    /// Unix time the week's dated board expires: the week's end plus the retention.
    pub week_expires_at: i64,
}

/// The UTC day and ISO week `ts` counts toward, with their dated boards kept `retention_days`
/// past the period's end.
pub fn periods_of(ts: DateTime<Utc>, retention_days: u32) -> EventPeriods {
    let day = ts.date_naive();
    let keep = Days::days(i64::from(retention_days));
    let end_of = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map(|t| (t + keep).and_utc().timestamp())
            .unwrap_or(i64::MAX)
    };
    let iso = day.iso_week();
    let next_monday = day + Days::days(7 - i64::from(day.weekday().num_days_from_monday()));
    EventPeriods {
        day: day.format("%Y-%m-%d").to_string(),
        day_expires_at: end_of(day + Days::days(1)),
        week: format!("{}-W{:02}", iso.year(), iso.week()),
        week_expires_at: end_of(next_monday),
    }
}

/// The score an event adds: `data.score`, an integer from 0 to [`MAX_SCORE`]; or why it can't.
pub fn score_of(event: &GameEvent) -> Result<i64, String> {
    match event.data.get("score") {
        None => Err(format!("scoring event {} has no data.score", event.event_type)),
        Some(v) => match v.as_i64() {
            Some(s) if (0..=MAX_SCORE).contains(&s) => Ok(s),
            _ => Err(format!(
                "data.score must be an integer from 0 to {MAX_SCORE}, got {v}"
            )),
        },
    }
}

/// The top N of one game's current board for a period, best first: what `leaderboards` holds.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardTop {
    pub game_id: String,
    pub period: Period,
    pub entries: Vec<(String, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_follow_the_utc_day_and_iso_week() {
        let last: DateTime<Utc> = "2024-12-29T23:59:59Z".parse().unwrap(); // a Sunday
        let first: DateTime<Utc> = "2024-12-30T00:00:00Z".parse().unwrap(); // Monday, ISO 2025-W01
        let a = periods_of(last, 0);
        let b = periods_of(first, 0);
        assert_eq!((a.day.as_str(), a.week.as_str()), ("2024-12-29", "2024-W52"));
        assert_eq!((b.day.as_str(), b.week.as_str()), ("2024-12-30", "2025-W01"));
        assert_eq!(
            a.day_expires_at,
            first.timestamp(),
            "a day's board expires at the next midnight plus retention"
        );
        assert_eq!(
            a.week_expires_at,
            first.timestamp(),
            "a week's board expires at the next Monday plus retention"
        );
        assert_eq!(periods_of(last, 2).day_expires_at - a.day_expires_at, 2 * 86_400);
    }
}
