"""The HTTP/1.1 toolkit both sides share: header rules (:mod:`.headers`: what is forwarded each
way), response heads (:mod:`.replies`: validated status and header lines, canned answers), chunked
framing (:mod:`.chunks`, whose constant the compiled text path reads too) and a client
connection's write-side flow control (:mod:`.flow`, what the stream sinks write through)."""
