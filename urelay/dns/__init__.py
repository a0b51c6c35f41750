"""The DNS authority: wire codec, answers, and the Twisted servers."""
