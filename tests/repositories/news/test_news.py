"""Article, sentiment and event queries against plain-Python oracles, point in time,
full-text ranking, race-safe deduplication and cascades, on a real PostgreSQL."""
from __future__ import annotations

import datetime as dt
import random
import threading

import psycopg2
import pytest

import marketstore
from marketstore import (
    ArticleRepository,
    DatabaseConnection,
    DatabaseMigration,
    DataValidationError,
    EventRepository,
    SentimentScoreRepository,
)
from marketstore.repositories import BUCKET_ORIGIN, SentimentBucket
from helpers import UTC, count_rows, sent_statements

T0 = dt.datetime(2024, 3, 4, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
SYMBOLS = ["AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "META"]




@pytest.fixture
def articles(db):
    return ArticleRepository()


@pytest.fixture
def sentiment(db):
    return SentimentScoreRepository()


@pytest.fixture
def events(db):
    return EventRepository()


def seed_articles(repo, rng: random.Random, count: int = 60) -> list:
    """Articles with random symbols, publication (sometimes none) and ingestion times."""
    made = []
    for i in range(count):
        published = None if rng.random() < 0.15 else T0 + rng.randint(0, 96 * 60) * dt.timedelta(minutes=1)
        made.append(repo.create(
            title=f"article {i}", url=f"https://news.example/{i}",
            symbols=rng.sample(SYMBOLS, rng.randint(0, 3)), published_at=published,
            ingested_at=T0 + rng.randint(0, 96 * 60) * dt.timedelta(minutes=1)))
    return made


def newest_first(rows):
    return sorted(rows, key=lambda a: (a.published_at is None,
                                       -(a.published_at.timestamp() if a.published_at else 0), -a.id))


# -- articles ---------------------------------------------------------------------

def test_for_symbol_matches_oracle(articles):
    rng = random.Random(10)
    stored = seed_articles(articles, rng)
    for _ in range(30):
        symbol = rng.choice(SYMBOLS)
        since = rng.choice([None, T0 + rng.randint(0, 96) * HOUR])
        as_of = rng.choice([None, T0 + rng.randint(0, 96) * HOUR])
        limit = rng.choice([1, 5, 100])
        expected = newest_first(
            a for a in stored if symbol in a.symbols
            and (since is None or (a.published_at is not None and a.published_at >= since))
            and (as_of is None or a.ingested_at <= as_of))[:limit]
        got = articles.for_symbol(symbol, since=since, limit=limit, as_of=as_of)
        assert [a.id for a in got] == [a.id for a in expected]


def test_for_symbol_is_containment_not_prefix_or_overlap(articles):
    articles.create(title="a", symbols=["AAPL", "MSFT"])
    articles.create(title="b", symbols=["AAP"])
    articles.create(title="c", symbols=["aapl"])
    assert [a.title for a in articles.for_symbol("AAPL")] == ["a"]
    assert articles.for_symbol("AAPL")[0].symbols == ["AAPL", "MSFT"]


def test_recent_matches_oracle_and_puts_undated_last(articles):
    rng = random.Random(11)
    stored = seed_articles(articles, rng, 40)
    dated = sum(a.published_at is not None for a in stored)
    for limit in (1, 10, dated, dated + 3, 100):
        assert [a.id for a in articles.recent(limit)] == [a.id for a in newest_first(stored)[:limit]]
    as_of = T0 + 48 * HOUR
    assert ([a.id for a in articles.recent(100, as_of=as_of)]
            == [a.id for a in newest_first(a for a in stored if a.ingested_at <= as_of)])


WORDS = ("market shares investor quarterly revenue guidance analyst outlook bond yield rally slump "
         "merger dividend buyback inflation payrolls forecast sector earnings").split()


def test_search_puts_the_matching_article_first(articles):
    rng = random.Random(12)
    for i in range(80):
        articles.create(title=" ".join(rng.choices(WORDS, k=6)), content=" ".join(rng.choices(WORDS, k=60)))
    target = articles.create(title="Quantum semiconductor breakthrough lifts chipmakers",
                             content="A quantum computing semiconductor result. " + " ".join(rng.choices(WORDS, k=40)))
    mention = articles.create(title=" ".join(rng.choices(WORDS, k=6)),
                              content=" ".join(rng.choices(WORDS, k=40)) + " semiconductor")
    got = articles.search("quantum semiconductors")  # stemmed: semiconductors ~ semiconductor
    assert [a.id for a in got] == [target.id]
    got = articles.search("semiconductor")
    assert [a.id for a in got] == [target.id, mention.id]  # title and content outrank content only
    assert got[0].rank > got[1].rank > 0
    filler = articles.search("market")
    assert target.id not in [a.id for a in filler] and len(filler) == 20  # default limit


def test_search_title_outranks_content(articles):
    body = articles.create(title="Weekly wrap", content="Oil prices climbed as refinery output fell.")
    head = articles.create(title="Refinery outage", content="Prices moved.")
    assert [a.id for a in articles.search("refinery")] == [head.id, body.id]


@pytest.mark.parametrize("text, expected", [
    ('"rate cut"', ["exact"]),            # phrase
    ("rate -june", ["other"]),            # exclusion
    ("hike or june", ["exact", "other"]),
    ("cut & | ! ( :* '", ["exact"]),      # tsquery syntax is just words here, never an error
    ("the and of", []),                   # only stop words: matches nothing
])
def test_search_uses_web_search_syntax(articles, text, expected):
    articles.create(title="exact", content="The central bank signalled a rate cut in June.")
    articles.create(title="other", content="The growth rate slowed; the hike came later.")
    assert sorted(a.title for a in articles.search(text)) == sorted(expected)


def test_search_index_follows_updates(articles):
    article = articles.create(title="Old headline", content="nothing here")
    articles.update(article.id, content="Tariff news")
    assert [a.id for a in articles.search("tariff")] == [article.id]
    assert articles.search("nothing") == []


def test_create_if_new_returns_existing_unchanged(articles, raw):
    first, created = articles.create_if_new(url="https://x.example/1", title="First", symbols=["AAPL"])
    again, created_again = articles.create_if_new(url="https://x.example/1", title="Second")
    assert (created, created_again) == (True, False)
    assert again.id == first.id and again.title == "First" and again.symbols == ["AAPL"]
    assert count_rows(raw, "articles") == 1


def _stored(raw):
    with raw.cursor() as cur:
        cur.execute("SELECT url, title, symbols, published_at FROM articles ORDER BY id")
        return cur.fetchall()


def test_copy_from_inserts_rows_and_skips_stored_or_repeated_urls_with_one_insert_per_batch(articles, raw):
    articles.create(title="already stored", url="https://x.example/0")
    rows = [{"title": f"article {i}", "url": f"https://x.example/{i % 4}", "symbols": ["AAPL"],
             "published_at": T0 + i * HOUR} for i in range(7)]
    rows.append({"title": "no url"})  # never a duplicate
    with sent_statements() as sent:
        assert articles.copy_from(rows, batch_size=3) == (4, 4)  # urls 1, 2, 3 and the one without
    inserts = [sql for sql, _ in sent if sql.startswith('INSERT INTO "articles"')]
    assert len(inserts) == 3 and all("ON CONFLICT" in sql and "RETURNING" in sql for sql in inserts)
    assert [sql for sql, _ in sent if sql not in inserts] == []  # nothing row by row beside them
    assert _stored(raw) == [
        ("https://x.example/0", "already stored", [], None),
        ("https://x.example/1", "article 1", ["AAPL"], T0 + HOUR),
        ("https://x.example/2", "article 2", ["AAPL"], T0 + 2 * HOUR),
        ("https://x.example/3", "article 3", ["AAPL"], T0 + 3 * HOUR),
        (None, "no url", [], None),
    ]
    assert articles.copy_from(rows) == (1, 7)  # again: only the article without a url is new


@pytest.mark.parametrize("bad, field", [
    ({"title": "t", "symbols": "AAPL"}, "symbols"),
    ({"url": "https://x.example/no-title"}, "title"),
    ({"title": "t", "ingested_at": T0}, "ingested_at"),  # the database's, for point-in-time reads
    ({"title": "t", "id": 7}, "id"),
    ({"title": "t", "author": "x"}, "author"),
    ("a title", "row"),
])
def test_copy_from_a_bad_row_names_row_and_field_and_loads_nothing(articles, raw, bad, field):
    rows = [{"title": f"article {i}", "url": f"https://x.example/{i}"} for i in range(5)]
    rows.insert(4, bad)  # after a whole first batch was sent
    with pytest.raises(DataValidationError) as info:
        articles.copy_from(rows, batch_size=2)
    assert (info.value.row, info.value.field) == (5, field)
    assert count_rows(raw, "articles") == 0


def test_copy_from_a_jsonl_file_names_its_line(articles, raw, tmp_path):
    path = tmp_path / "news.jsonl"
    path.write_text('{"title": "one", "url": "https://x.example/1", "published_at": "2024-03-04T10:00:00Z"}\n'
                    "\n"
                    '{"title": "one again", "url": "https://x.example/1"}\n'
                    '{"title": "two", "symbols": ["MSFT"]}\n', encoding="utf-8")
    assert articles.copy_from(path) == (2, 1)
    assert _stored(raw) == [("https://x.example/1", "one", [], dt.datetime(2024, 3, 4, 10, tzinfo=UTC)),
                            (None, "two", ["MSFT"], None)]
    path.write_text('{"title": "three"}\n{"title": "four", "published_at": "soon"}\n', encoding="utf-8")
    with pytest.raises(DataValidationError) as info:
        articles.copy_from(str(path))
    assert (info.value.source, info.value.line, info.value.field) == (str(path), 2, "published_at")
    path.write_text('{"title": "five"}\n{"title": \n', encoding="utf-8")
    with pytest.raises(DataValidationError) as info:
        articles.copy_from(str(path))
    assert (info.value.line, info.value.field) == (2, "row") and "valid JSON" in info.value.expected
    assert count_rows(raw, "articles") == 2


def test_copy_from_inside_a_session_is_undone_with_it(articles, raw):
    with pytest.raises(RuntimeError):
        with marketstore.get_db_session():
            assert articles.copy_from([{"title": "t", "url": "https://x.example/1"}]) == (1, 0)
            raise RuntimeError("the caller fails after the load")
    assert count_rows(raw, "articles") == 0


def test_copy_from_refuses_what_is_not_rows_or_a_path(articles):
    for bad in (b"news.jsonl", {"title": "t"}, 42):
        with pytest.raises(DataValidationError) as info:
            articles.copy_from(bad)
        assert info.value.field == "rows_or_jsonl_path"
    with pytest.raises(DataValidationError) as info:
        articles.copy_from("/no/such/news.jsonl")
    assert info.value.field == "path"


@pytest.mark.parametrize("url, data, field", [
    (None, {"title": "t"}, "url"),
    ("", {"title": "t"}, "url"),
    ("https://x.example/2", {}, "title"),
    ("https://x.example/2", {"title": "t", "symbols": "AAPL"}, "symbols"),
])
def test_create_if_new_refuses_bad_data(articles, raw, url, data, field):
    with pytest.raises(DataValidationError) as info:
        articles.create_if_new(url=url, **data)
    assert info.value.field == field
    assert count_rows(raw, "articles") == 0


def test_create_if_new_race_creates_exactly_one(articles, raw):
    barrier = threading.Barrier(8)
    results, errors = [], []

    def worker(i):
        try:
            barrier.wait(5)
            results.append(articles.create_if_new(url="https://race.example/", title=f"writer {i}"))
        except Exception as exc:  # collected and asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == [] and len(results) == 8
    assert sum(created for _, created in results) == 1
    assert len({article.id for article, _ in results}) == 1
    assert len({article.title for article, _ in results}) == 1
    assert count_rows(raw, "articles") == 1


def test_search_migration_round_trip_indexes_existing_articles(create_database):
    """002_article_search: rollback removes the column and index; migrating again
    computes the vector for articles stored in between, and the schema verifies."""
    url = create_database()
    connection = DatabaseConnection().initialize(url, pool_size=1, max_overflow=0)
    conn = psycopg2.connect(url)
    conn.autocommit = True

    def fetch(sql):
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    try:
        migration = DatabaseMigration(connection)
        migration.migrate()
        assert migration.verify_schema() == []
        applied = migration.applied()
        later = applied[applied.index("002_article_search"):]  # 002 and whatever came after it
        assert migration.rollback(len(later)) == later[::-1]
        about_search = [p for p in migration.verify_schema() if p.startswith("articles") and "_length" not in p]
        assert sorted(about_search) == ["articles.search_vector: column missing",
                                        "articles: index articles_search_vector missing"]
        fetch("INSERT INTO articles (title, content) VALUES ('Copper rally', 'Mines strike') RETURNING id")
        assert migration.migrate() == later
        assert migration.verify_schema() == []
        assert fetch("SELECT indexdef FROM pg_indexes WHERE indexname = 'articles_search_vector'") == [
            ("CREATE INDEX articles_search_vector ON public.articles USING gin (search_vector)",)]
        assert fetch("SELECT title FROM articles WHERE search_vector @@ websearch_to_tsquery('english', 'strikes')") \
            == [("Copper rally",)]
    finally:
        conn.close()
        connection.close()


def test_long_content_is_indexed_up_to_the_tsvector_limit(articles):
    """A 1,000,000-character content of distinct words would overflow a tsvector (1 MB);
    the first 100,000 characters are indexed and the article is stored."""
    words = " ".join(f"w{i:06d}x" for i in range(111_111))[:1_000_000]
    article = articles.create(title="Long read", content=words)
    assert [a.id for a in articles.search("w000001x")] == [article.id]
    assert articles.search("w100000x") == []  # beyond the first 100,000 characters


# -- sentiment ----------------------------------------------------------------------

def seed_sentiment(articles, sentiment, rng: random.Random):
    stored = seed_articles(articles, rng, 40)
    scores = []
    for _ in range(300):
        article = rng.choice(stored)
        score = sentiment.create(article=article.id, score=round(rng.uniform(-1, 1), 4),
                                 confidence=rng.random(), model="finbert",
                                 timestamp=T0 + rng.randint(0, 5 * 24 * 60) * dt.timedelta(minutes=1))
        scores.append((score, article))
    return stored, scores


def test_average_and_timeseries_match_oracle(articles, sentiment):
    rng = random.Random(13)
    _, scores = seed_sentiment(articles, sentiment, rng)
    buckets = {"1 hour": HOUR, "15m": dt.timedelta(minutes=15), "1 day": dt.timedelta(days=1),
               "6h": 6 * HOUR}
    for _ in range(25):
        symbol = rng.choice(SYMBOLS)
        a, b = sorted(rng.sample(range(-5, 125), 2))
        start, end = T0 + a * HOUR, T0 + b * HOUR
        as_of = rng.choice([None, T0 + rng.randint(0, 96) * HOUR])
        bucket = rng.choice(list(buckets))
        chosen = [(s.timestamp, s.score) for s, art in scores
                  if symbol in art.symbols and start <= s.timestamp < end
                  and (as_of is None or art.ingested_at <= as_of)]
        average = sentiment.average_for_symbol(symbol, start, end, as_of=as_of)
        if chosen:
            assert average == pytest.approx(sum(v for _, v in chosen) / len(chosen), abs=1e-12)
        else:
            assert average is None
        width = buckets[bucket]
        grouped: dict[dt.datetime, list[float]] = {}
        for ts, value in chosen:
            grouped.setdefault(BUCKET_ORIGIN + ((ts - BUCKET_ORIGIN) // width) * width, []).append(value)
        series = sentiment.timeseries(symbol, start, end, bucket=bucket, as_of=as_of)
        assert all(isinstance(row, SentimentBucket) for row in series)
        assert [(r.bucket, r.count) for r in series] == [(k, len(v)) for k, v in sorted(grouped.items())]
        for row in series:
            assert row.average == pytest.approx(sum(grouped[row.bucket]) / row.count, abs=1e-12)


def test_for_article_in_time_order(articles, sentiment):
    article = articles.create(title="t", ingested_at=T0)
    other = articles.create(title="u")
    late = sentiment.create(article=article.id, score=0.1, confidence=1, model="m", timestamp=T0 + 2 * HOUR)
    early = sentiment.create(article=article.id, score=0.2, confidence=1, model="m", timestamp=T0 + HOUR)
    sentiment.create(article=other.id, score=0.3, confidence=1, model="m")
    assert [s.id for s in sentiment.for_article(article.id)] == [early.id, late.id]
    assert sentiment.for_article(article.id, as_of=T0 - HOUR) == []
    assert len(sentiment.for_article(article.id, as_of=T0)) == 2
    assert sentiment.for_article(999_999) == []


# -- events -------------------------------------------------------------------------

def seed_events(articles, events, rng: random.Random):
    stored = seed_articles(articles, rng, 20)
    made = []
    for i in range(120):
        article = rng.choice(stored + [None] * 5)
        made.append((events.create(
            article=None if article is None else article.id, symbols=rng.sample(SYMBOLS, rng.randint(0, 2)),
            event_type=rng.choice(["earnings", "merger", "halt"]), severity=rng.randint(1, 5),
            timestamp=T0 + rng.randint(0, 96 * 60) * dt.timedelta(minutes=1)), article))
    return made


def visible(event, article, as_of) -> bool:
    if as_of is None:
        return True
    return article.ingested_at <= as_of if article is not None else event.timestamp <= as_of


def by_newest(rows):
    return [e.id for e in sorted(rows, key=lambda e: (e.timestamp, e.id), reverse=True)]


def test_event_queries_match_oracle(articles, events):
    rng = random.Random(14)
    made = seed_events(articles, events, rng)
    for _ in range(30):
        since = rng.choice([None, T0 + rng.randint(0, 96) * HOUR])
        as_of = rng.choice([None, T0 + rng.randint(0, 96) * HOUR])
        shown = [e for e, a in made if visible(e, a, as_of) and (since is None or e.timestamp >= since)]
        severity, limit = rng.randint(1, 5), rng.choice([3, 100])
        assert ([e.id for e in events.recent(severity, since=since, limit=limit, as_of=as_of)]
                == by_newest(e for e in shown if e.severity >= severity)[:limit])
        kind = rng.choice(["earnings", "merger", "halt", "split"])
        assert ([e.id for e in events.by_type(kind, since=since, as_of=as_of)]
                == by_newest(e for e in shown if e.event_type == kind))
        symbol = rng.choice(SYMBOLS)
        assert ([e.id for e in events.for_symbol(symbol, since=since, as_of=as_of)]
                == by_newest(e for e in shown if symbol in e.symbols))


# -- point in time --------------------------------------------------------------------

def test_as_of_hides_news_ingested_later(articles, sentiment, events):
    """A backtest replaying 10:00 sees the 09:00 article, not the 11:00 one published earlier."""
    known = articles.create(title="known early", content="guidance raised", symbols=["AAPL"],
                            published_at=T0 + 8 * HOUR, ingested_at=T0 + 9 * HOUR)
    late = articles.create(title="learnt late", content="guidance raised", symbols=["AAPL"],
                           published_at=T0 + 7 * HOUR, ingested_at=T0 + 11 * HOUR)
    for article, score in ((known, 0.5), (late, -0.9)):
        sentiment.create(article=article.id, score=score, confidence=1, model="m", timestamp=T0 + 6 * HOUR)
    events.create(article=known.id, symbols=["AAPL"], event_type="guidance", severity=3, timestamp=T0 + 8 * HOUR)
    events.create(article=late.id, symbols=["AAPL"], event_type="guidance", severity=3, timestamp=T0 + 8 * HOUR)
    events.create(symbols=["AAPL"], event_type="halt", severity=5, timestamp=T0 + 10 * HOUR)  # no article
    events.create(symbols=["AAPL"], event_type="halt", severity=5, timestamp=T0 + 12 * HOUR)  # no article
    as_of, day = T0 + 10 * HOUR, (T0, T0 + 24 * HOUR)

    assert [a.id for a in articles.for_symbol("AAPL", as_of=as_of)] == [known.id]
    assert [a.id for a in articles.for_symbol("AAPL")] == [known.id, late.id]
    assert [a.id for a in articles.recent(10, as_of=as_of)] == [known.id]
    assert [a.id for a in articles.search("guidance", as_of=as_of)] == [known.id]
    assert sentiment.average_for_symbol("AAPL", *day, as_of=as_of) == pytest.approx(0.5)
    assert sentiment.average_for_symbol("AAPL", *day) == pytest.approx(-0.2)
    assert [(b.average, b.count) for b in sentiment.timeseries("AAPL", *day, as_of=as_of)] == [(0.5, 1)]
    assert [s.article_id for s in sentiment.for_article(late.id, as_of=as_of)] == []
    seen = events.recent(as_of=as_of)
    assert [(e.event_type, e.article_id) for e in seen] == [("halt", None), ("guidance", known.id)]
    assert [e.article_id for e in events.for_symbol("AAPL", as_of=as_of)] == [None, known.id]
    assert [e.article_id for e in events.by_type("guidance", as_of=as_of)] == [known.id]
    assert len(events.recent()) == 4
    # "at or before": the instant of ingestion is visible
    assert [a.id for a in articles.for_symbol("AAPL", as_of=T0 + 11 * HOUR)] == [known.id, late.id]


# -- cascades ---------------------------------------------------------------------------

def test_deleting_an_article_deletes_its_scores_and_unlinks_its_events(articles, sentiment, events, raw):
    article = articles.create(title="doomed", symbols=["AAPL"])
    keep = articles.create(title="kept", symbols=["AAPL"])
    for a in (article, keep):
        sentiment.create(article=a.id, score=0.1, confidence=0.5, model="m")
    event = events.create(article=article.id, symbols=["AAPL"], event_type="earnings", severity=2)
    kept_event = events.create(article=keep.id, symbols=["AAPL"], event_type="earnings", severity=2)
    assert articles.delete(article.id) is True
    with raw.cursor() as cur:
        cur.execute("SELECT article_id FROM sentiment_scores")
        assert cur.fetchall() == [(keep.id,)]
        cur.execute("SELECT id, article_id FROM events ORDER BY id")
        assert cur.fetchall() == [(event.id, None), (kept_event.id, keep.id)]


# -- parameter validation (refused before any database access: none is configured) ---

@pytest.mark.parametrize("repo, method, args, kwargs, field", [
    (ArticleRepository, "for_symbol", ("",), {}, "symbol"),
    (ArticleRepository, "for_symbol", ("AAPL",), {"limit": 0}, "limit"),
    (ArticleRepository, "for_symbol", ("AAPL",), {"limit": True}, "limit"),
    (ArticleRepository, "for_symbol", ("AAPL",), {"since": "last week"}, "since"),
    (ArticleRepository, "for_symbol", ("AAPL",), {"as_of": 17}, "as_of"),
    (ArticleRepository, "recent", (10_001,), {}, "limit"),
    (ArticleRepository, "search", ("",), {}, "text"),
    (ArticleRepository, "search", ("a" * 1001,), {}, "text"),
    (ArticleRepository, "search", ("nul\x00",), {}, "text"),
    (SentimentScoreRepository, "for_article", (0,), {}, "article_id"),
    (SentimentScoreRepository, "average_for_symbol", ("AAPL", T0 + HOUR, T0), {}, "end"),
    (SentimentScoreRepository, "timeseries", ("AAPL", T0, T0 + HOUR), {"bucket": "1 fortnight"}, "bucket"),
    (EventRepository, "recent", (0,), {}, "min_severity"),
    (EventRepository, "recent", (6,), {}, "min_severity"),
    (EventRepository, "by_type", (None,), {}, "event_type"),
    (EventRepository, "for_symbol", (["AAPL"],), {}, "symbol"),
])
def test_bad_parameters_are_refused(repo, method, args, kwargs, field):
    marketstore.close_database()
    with pytest.raises(DataValidationError) as info:
        getattr(repo(), method)(*args, **kwargs)
    assert info.value.field == field


# -- sentiment ranges: closed intervals ------------------------------------------

SENTIMENT_CASES = [
    ("score", -1, True), ("score", 1, True), ("score", -1.0, True), ("score", 1.0, True),
    ("confidence", 0, True), ("confidence", 1, True),
    ("score", -1.0000001, False), ("score", 1.0000001, False),
    ("confidence", -0.0000001, False), ("confidence", 1.0000001, False),
]


@pytest.mark.parametrize("field, value, accepted", SENTIMENT_CASES,
                         ids=[f"{f}={v!r}" for f, v, _ in SENTIMENT_CASES])
def test_sentiment_bounds_are_inclusive(db, raw, field, value, accepted):
    article = ArticleRepository().create(title="Edge case")
    row = {"article": article, "score": 0.5, "confidence": 0.5, "model": "edge", field: value}
    scores = SentimentScoreRepository()
    if accepted:
        stored = scores.create(**row)
        assert getattr(stored, field) == value
    else:
        with pytest.raises(DataValidationError) as info:
            scores.create(**row)
        assert (info.value.field, info.value.value) == (field, value)

    # The CHECK constraint, the second line of defence, draws the same line.
    other = {"score": 0.5, "confidence": 0.5, field: value}
    sql = ("INSERT INTO sentiment_scores (article_id, score, confidence, model) "
           "VALUES (%s, %s, %s, 'raw')")
    with raw.cursor() as cur:
        if accepted:
            cur.execute(sql, (article.id, other["score"], other["confidence"]))
        else:
            with pytest.raises(psycopg2.errors.CheckViolation):
                cur.execute(sql, (article.id, other["score"], other["confidence"]))

