//! PostgreSQL: connection pool, embedded refinery migrations, local clusters.
