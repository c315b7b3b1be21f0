"""Moving models in and out: Hugging Face / MiniCPM / Xmodel / GGUF import, plain-Llama export."""
