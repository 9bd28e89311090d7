"""The route handlers: a run (:mod:`.runs`, the only place a run is sequenced), stream-token mints
(:mod:`.tokens`), job records (:mod:`.jobs`), CORS for the browser route (:mod:`.cors`)."""
