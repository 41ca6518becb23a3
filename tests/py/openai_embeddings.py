"""Embeddings from memex serve through the official OpenAI Python SDK.

usage: openai_embeddings.py BASE_URL API_KEY TEXT...
Prints one JSON object: the vectors the SDK returned with its default encoding (base64) and
with encoding_format="float", the model and usage, and a single-string request.
"""
import json
import sys

import openai

base, key, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
default = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
single = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0])
try:
    openai.OpenAI(base_url=base + "/v1", api_key="mx_wrong", max_retries=0).embeddings.create(
        model="all-MiniLM-L6-v2", input="x")
    bad_key = "accepted"
except openai.AuthenticationError as e:
    bad_key = e.status_code
print(json.dumps({
    "default": [d.embedding for d in default.data],
    "default_index": [d.index for d in default.data],
    "float": [d.embedding for d in floats.data],
    "single": single.data[0].embedding,
    "model": default.model,
    "usage": {"prompt_tokens": default.usage.prompt_tokens, "total_tokens": default.usage.total_tokens},
    "bad_key": bad_key,
}))
