;; A component of five core instances, each with a 100 MiB linear memory (1600 pages), plus one module
;; with two more memories (multi-memory): 700 MiB in all, each memory well under a per-memory cap.
(component
  (core module $one (memory 1600))
  (core module $two (memory 1600) (memory 1600))
  (core instance (instantiate $one))
  (core instance (instantiate $one))
  (core instance (instantiate $one))
  (core instance (instantiate $one))
  (core instance (instantiate $one))
  (core instance (instantiate $two)))
