"""The seeds' client example: embeddings through labgate with the official OpenAI SDK.

    labgate embeddings serve --port 8002 &         # the service (the seeds' layout)
    labgate serve --config examples/embeddings     # the gateway on 4000, routing to it
    python examples/embeddings/client.py

Or just `make serve` (the built-in default serves text-embedding-mini in-process), then this script.
"""

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:4000/v1", api_key="anything")  # a key only if auth is on

response = client.embeddings.create(
    model="text-embedding-mini",
    input=["Your text to embed here", "Another text"],
)
print(len(response.data[0].embedding))  # 384-dim vector
print(response.usage)
