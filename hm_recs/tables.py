"""The lake's tables and what their columns mean, in one place.

Every table name is defined here once; the modules that read or write a table import its name
(as the Dagster open platform keeps its table names). The column descriptions are what the Dagster
UI shows in every table asset's column schema (``dagster/column_schema``), so a reader of a table
page does not have to find the code that wrote it; a column keeps one meaning in every table.
"""

from __future__ import annotations

# The lake's tables, by name: each defined here once (the modules that write them import it).
REJECTS_TABLE = "rejects"  # every rejected row of every file, with file, line, fields and reason
# size:sha256 of each raw file the raw steps last read (the file sensor compares)
INGESTED_FILES_TABLE = "ops/ingested_files"
RUN_FAILURES_TABLE = "ops/run_failures"  # failed runs with their steps' errors and end time
IMAGE_MANIFEST = "images/manifest"  # one row per article image: path, size, status
ARTICLE_FEATURES = "features/articles"  # the catalogue with dense article_idx: what every model ranks
CUSTOMER_FEATURES = "features/customers"  # customers with dense customer_idx
SESSIONS_TABLE = "sessions/purchases"  # purchases grouped into weekly sessions, partitioned by week_start
TIME_SPLIT_TABLE = "splits/time_split"  # the train / validation / test week boundaries
POPULARITY_TABLE = "baselines/popularity"  # the three popularity rankings per target week
EVENTS_TABLE = "evaluation/events"  # the prediction events every model answers
COMPARISON_TABLE = "evaluation/model_comparison"  # every model on the same weeks, one row per (model, split)
# reconstruction quality (PSNR, SSIM, LPIPS) of the base and fine-tuned VQGAN
VQGAN_EVALUATION_TABLE = "evaluation/vqgan"
IMAGE_TOKENS = "images/tokens"  # each article image as VQGAN codebook indices
CODEBOOK = "images/codebook"  # the fine-tuned VQGAN's codebook vectors
SEQUENCES = "bart/sequences"  # BART training pairs: purchase history -> next article
SEMANTIC_IDS = "bart/semantic_ids"  # each article's semantic-ID code sequence
BART_TEXT_TABLE = "evaluation/bart_text"  # BERTScore of generated article texts per variant and week
# paired differences between BART variants and the baselines
BART_COMPARISONS_TABLE = "evaluation/bart_comparisons"
BART_COLD_START_TABLE = "evaluation/bart_cold_start"  # BART and baselines on customers with short histories
# the champion's 12 articles for every customer, for the week after the data
CANDIDATES_TABLE = "ranking/candidates"  # each week's candidate articles per customer, one score per source
RANKER_ROWS_TABLE = "ranking/training_data"  # the candidates with the ranker's features and labels
CANDIDATE_RECALL_TABLE = "ranking/candidate_recall"  # each source's recall on the labelled weeks
RECOMMENDATIONS_TABLE = "serving/recommendations"
UNKNOWN_TABLE = "serving/unknown_customer"  # the champion's answer for a customer it does not know
METRICS_TABLES = {
    family: f"evaluation/{family}_metrics" for family in ("popularity", "gru4rec", "bart", "ranker")
}
"""Each evaluation asset's protocol metrics (see :func:`hm_recs.evaluation.weeks.metrics_table`)."""
CUSTOMER_AP_TABLES = {f: f"evaluation/{f}_customer_ap" for f in METRICS_TABLES}
"""Each model's average precision per MAP@12 customer: paired differences without re-scoring."""


def raw_table(name: str) -> str:
    """The text copy of a Kaggle file (``articles`` -> ``raw/articles``)."""
    return f"raw/{name}"


def clean_table(name: str) -> str:
    """The validated, typed table of a Kaggle file (``articles`` -> ``clean/articles``)."""
    return f"clean/{name}"


COLUMN_DESCRIPTIONS: dict[str, str] = {
    # the Kaggle files (articles.csv, customers.csv, transactions_train.csv)
    "article_id": "H&M article id: 10 digits, the first 7 are the product code",
    "product_code": "7-digit product: the articles of one product differ in colour or pattern",
    "prod_name": "product name",
    "product_type_no": "product type code",
    "product_type_name": "product type (Trousers, Sweater, ...)",
    "product_group_name": "product group (Garment Upper body, ...)",
    "graphical_appearance_no": "graphical appearance code",
    "graphical_appearance_name": "graphical appearance (Solid, Stripe, ...)",
    "colour_group_code": "colour group code",
    "colour_group_name": "colour group (Black, Light Blue, ...)",
    "perceived_colour_value_id": "perceived colour value code",
    "perceived_colour_value_name": "perceived colour value (Dark, Light, ...)",
    "perceived_colour_master_id": "perceived colour master code",
    "perceived_colour_master_name": "perceived colour master (Black, Blue, ...)",
    "department_no": "department code",
    "department_name": "department",
    "index_code": "index letter (A = Ladieswear, ...)",
    "index_name": "index (Ladieswear, Divided, ...)",
    "index_group_no": "index group code",
    "index_group_name": "index group",
    "section_no": "section code",
    "section_name": "section",
    "garment_group_no": "garment group code",
    "garment_group_name": "garment group",
    "detail_desc": "free-text product description (may be empty)",
    "customer_id": "customer: 64 lowercase hex characters, as in customers.csv",
    "FN": "1.0 when the customer receives fashion news, else empty",
    "Active": "1.0 when the customer is active for communication, else empty",
    "club_member_status": "ACTIVE, PRE-CREATE or LEFT CLUB",
    "fashion_news_frequency": "NONE, Regularly or Monthly",
    "age": "age in years (empty when unknown)",
    "postal_code": "hashed postal code",
    "t_dat": "purchase day",
    "price": "price, scaled by H&M (not a currency amount)",
    "sales_channel_id": "1 = store, 2 = online",
    # lineage of every row back to its file
    "source_file": "the raw file the row was read from",
    "line": "physical line of the raw file on which the record starts (header = 1; Parquet: row number)",
    # rejects
    "table": "the contract the row failed (articles, customers, transactions)",
    "stage": "parse (malformed record) or validate (a field breaks a rule)",
    "fields": "the fields that failed, comma-separated (* for the whole record)",
    "reason": "why the row was rejected, naming the field and the rule",
    "record": "the rejected record as written in the file",
    # indices and sessions
    "article_idx": "dense article index (0..articles-1, in article_id order); what the models see",
    "customer_idx": "dense customer index (in customer_id order)",
    "session_id": "one customer's purchases of one week",
    "week_start": "first day (a Wednesday) of the week the row belongs to",
    "event_idx": "position of the purchase within its session",
    "session_length": "purchases in the session",
    "is_consecutive_repeat": "the same article as the previous purchase of the session",
    # evaluation
    "model": "protocol name of the model (pop_all_time, gru4rec_warm, bart_semantic_id, ...)",
    "split": "validation or test: the target week the row is scored on",
    "metric": "Recall@K, MRR@K, NDCG@K, MAP@12 or Coverage@12",
    "value": "the metric's value on every event (or customer, for MAP@12) of the week",
    "ci_low": "lower end of the 95 % bootstrap interval (customers resampled)",
    "ci_high": "upper end of the 95 % bootstrap interval (customers resampled)",
    "n": "events scored (customers for MAP@12 and Coverage@12)",
    "seconds": "wall time of the evaluation",
    "mask_history": "the protocol masked the customer's earlier purchases",
    "collapse_repeats": "the protocol collapsed consecutive repeats of one article",
    "target_article_idx": "the article bought at the event (what the model must rank)",
    "history_length": "purchases before the event",
    "session_position": "purchases before the event within its session",
    "events": "events scored; below the week's full count means a seeded sample",
    "training_seconds": "training time recorded on the model's MLflow run",
    "parameters": "trainable parameters of the model",
    "bertscore_f1": "BERTScore F1 of the generated text against the bought article's (BART text variants)",
    "registered_model": "the MLflow registered model the row's model is a version of",
    # ranking
    "week": "first day of the week the candidates are for (features read only the days before it)",
    "label": "1 when the customer bought the article in the week, 0 when not, missing for the serving week",
    "n_sources": "how many candidate sources proposed the pair",
    "recall": "share of the week's (customer, article) purchases among the candidates",
    "customers_hit": "share of the week's buyers with at least one purchase among their candidates",
    "candidates_per_customer": "mean candidates per buyer of the week",
    "ap": "average precision at 12 of the customer's list on the week (the Kaggle MAP@12's term)",
    "pairs": "distinct (customer, article) purchases of the week",
    "gru4rec_fit": "the GRU4Rec fit whose top 50 is the week's gru4rec source (trained before the week)",
    # serving
    "prediction": "12 article ids separated by spaces, best first (the Kaggle submission format)",
    "source": "model, or which fallback answered (unknown customer, no usable history)",
    "model_version": "version of the served registered model",
    "cold_start": "the customer has no purchases: the list is the popularity fallback",
    # images
    "path": "image file path",
    "status": "ok, or why the image could not be used (missing, corrupt, ...)",
    "error": "the decoding error of an unusable image",
    "width": "image width in pixels",
    "height": "image height in pixels",
    "tokens": "VQGAN codebook indices of the image, row-major",
    "token_grid": "side of the square token grid",
    "code": "codebook index",
    "embedding": "the code's vector",
}


def describe(column: str) -> str | None:
    """The description of ``column`` (metric columns such as ``MAP@12`` describe themselves)."""
    if column in COLUMN_DESCRIPTIONS:
        return COLUMN_DESCRIPTIONS[column]
    if "@" in column:
        return f"{column} on the split's events"
    if column.startswith("score_"):
        source = column.removeprefix("score_")
        return f"the {source} source's score for the pair (missing: it did not propose it)"
    if column.split("_")[0] in ("customer", "article", "pair"):
        return "ranker feature, read from purchases before the week (hm_recs.ranking.ranker.FEATURES)"
    return None
