"""Request and response bodies of the HTTP API (pydantic; FastAPI validates with them).

Requests are strict (no type coercion: ``"3"`` is not an int) and forbid unknown fields, so a
typo such as ``dimension`` is a 422 naming the field instead of being silently ignored. Limits
that depend on the server's configuration (items per request, characters per item) are checked
by the app, not here, so that they answer 413 with the configured values.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``: the OpenAI schema, plus ``truncate``, ``input_type`` and ``prompt_name``."""

    input: str | list[str] = Field(description="A text or a list of texts (token-id input is not supported).")
    model: str | None = Field(None, description="Served model name (see /info); checked when given.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes, base64-encoded.")
    dimensions: int | None = Field(None, description="Matryoshka dimension to truncate to (see /info).")
    user: str | None = Field(None, description="Accepted for OpenAI compatibility; ignored.")
    truncate: bool = Field(False, description="Truncate texts longer than the model's max tokens "
                                              "instead of answering 413.")
    input_type: Literal["query", "document", "search_query", "search_document"] | None = Field(
        None, description="Embed the texts as queries or as documents: the model's query or document "
                          "prompt goes before each (as Voyage and Cohere clients send it).")
    prompt_name: str | None = Field(
        None, description="A prompt of the model by name (see /info 'prompts'), e.g. a task's "
                          "'<task>-query'. Neither field: the model's default prompt.")

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, value: Any) -> Any:
        """Token ids (the OpenAI schema allows them) are of another model's tokenizer: said plainly."""
        if isinstance(value, list) and any(isinstance(x, (int, list)) and not isinstance(x, bool) for x in value):
            raise ValueError("token ids are not accepted, send the texts (LangChain's OpenAIEmbeddings sends "
                             "token ids unless check_embedding_ctx_length=False)")
        return value


class ModelEntry(BaseModel):
    """One served model, as the OpenAI models API describes it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """``GET /v1/models``: what ``client.models.list()`` reads."""

    object: Literal["list"] = "list"
    data: list[ModelEntry]


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class SearchRequest(_Request):
    """``POST /search``: query → top-k documents of the served corpus."""

    query: str = Field(description="The search query.")
    top_k: int | None = Field(None, ge=1, description="Results to return (default 10; at most the "
                                                      "server's max_top_k).")
    rerank: bool = Field(False, description="Rescore candidates with the served cross-encoder.")
    rerank_top_n: int | None = Field(None, ge=1, description="Candidates to rerank (default: "
                                                             "max(top_k, 20), at most max_top_k).")
    truncate: bool = Field(False, description="Truncate a query longer than the model's max tokens.")
    input_type: Literal["query", "document", "search_query", "search_document"] | None = Field(
        None, description="Encode the query with the model's query prompt (the default) or, to find the "
                          "documents most like a document, with its document prompt.")
    prompt_name: str | None = Field(None, description="The prompt the query is encoded with (see /info "
                                                      "'prompts'); default: the model's query prompt.")


class SearchHit(BaseModel):
    rank: int
    id: str
    title: str
    snippet: str = Field(description="Part of the text around the first query-term match.")
    highlights: list[tuple[int, int]] = Field(description="Character spans of query terms in snippet.")
    title_highlights: list[tuple[int, int]]
    score: float = Field(description="Final score: the cross-encoder's when reranked, else retrieval.")
    retrieval_score: float
    rerank_score: float | None = None


class SearchResponse(BaseModel):
    object: Literal["search_results"] = "search_results"
    query: str
    model: str
    reranked: bool
    results: list[SearchHit]
    usage: Usage


class RerankRequest(_Request):
    """``POST /rerank``: query + texts → cross-encoder scores, best first."""

    query: str
    texts: list[str]
    top_n: int | None = Field(None, ge=1, description="Return only the best top_n (default: all).")
    return_text: bool = Field(False, description="Include each text in the results.")
    truncate: bool = Field(False, description="Truncate (query, text) pairs longer than the "
                                              "cross-encoder's max tokens instead of answering 413.")


class RerankResult(BaseModel):
    index: int
    score: float
    text: str | None = None


class RerankResponse(BaseModel):
    object: Literal["rerank_results"] = "rerank_results"
    model: str
    results: list[RerankResult]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str


class ErrorResponse(BaseModel):
    """The one shape of every 4xx/5xx body."""

    error: ErrorDetail
