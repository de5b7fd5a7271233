"""``longnet bench``: measurements that print numbers (attention, tokenize); tests live apart."""
