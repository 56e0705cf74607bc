"""Media engine: RTP/RTCP, G.711, DTMF, tones, prompts, recording, jitter buffer, the 20 ms mixer."""
