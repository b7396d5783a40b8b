//! [`Prepared`]: a statement whose SQL text is the same on every call, kept prepared on each
//! connection.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

/// Wraps a statement diesel would not cache (raw SQL, an `UPDATE`) whose text never varies, so
/// the connection's statement cache keeps it prepared, keyed by its SQL and bind types.
///
/// Uncached, every call is parsed and planned again and costs an extra round trip (prepare,
/// then execute): at 1,000 events/s the logger's insert and offset update were planned ~300
/// times a second (`pg_stat_statements`, docs/performance.md). Only for SQL built from a fixed
/// string: a text that varies would fill the cache.
pub struct Prepared<Q>(pub Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}
