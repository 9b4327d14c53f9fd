-- Least privilege for an application role of marketstore.
--
--   psql -v app_role=marketstore_app -f roles.sql      (or: marketstore grant marketstore_app)
--
-- Run as the owner of the tables (the role that runs the migrations). The
-- application role may read and write rows, and use the id sequences; it
-- cannot DROP, TRUNCATE, ALTER or CREATE anything. The order audit trail is
-- append-only for it: no UPDATE or DELETE on order_events.

-- PostgreSQL 15 already denies CREATE on schema public to PUBLIC; older
-- servers do not (CVE-2018-1058), so say it explicitly.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app_role";

GRANT SELECT, INSERT, UPDATE, DELETE
    ON prices, articles, sentiment_scores, events, trading_signals, orders, backtest_results
    TO :"app_role";
GRANT SELECT, INSERT ON order_events TO :"app_role";

GRANT USAGE, SELECT
    ON SEQUENCE prices_id_seq, articles_id_seq, sentiment_scores_id_seq, events_id_seq,
                trading_signals_id_seq, orders_id_seq, order_events_id_seq, backtest_results_id_seq
    TO :"app_role";

-- PriceRepository.upsert_many stages rows in a temporary table (CREATE
-- TEMPORARY TABLE ... ON COMMIT DROP), which needs the TEMPORARY privilege on
-- the database. PostgreSQL grants it to PUBLIC on every new database; where a
-- deployment has revoked it, grant it back to the application role:
--   GRANT TEMPORARY ON DATABASE <database> TO <app_role>;
