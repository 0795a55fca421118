{{/* redis-server's arguments. */}}
{{- define "llm-batcher.redis.args" -}}
- --port
- {{ .Values.redis.port | quote }}
- --dir
- /data
# Every write is logged and fsynced each second: a restarted Redis keeps the queue.
- --appendonly
- "yes"
# Protected mode would refuse every client but localhost when auth is off; the NetworkPolicy
# and the password guard Redis instead.
- --protected-mode
- "no"
{{- if include "llm-batcher.redisSecretName" . }}
# The kubelet expands $(REDIS_PASSWORD) from the Secret: the pod spec holds no password.
- --requirepass
- $(REDIS_PASSWORD)
{{- end }}
{{- if include "llm-batcher.redisAcl" . }}
{{- $prefix := .Values.config.keyPrefix }}
{{- range $component := list "api" "worker" }}
# The ACL user of the {{ $component }} pods (SECURITY.md; the rules of protocol/acl.py).
- --user
- llmb-{{ $component }}
- "on"
- resetpass
- ">$(REDIS_{{ upper $component }}_PASSWORD)"
- resetkeys
- {{ printf "~%s:*" $prefix | quote }}
- resetchannels
- {{ printf "&%s:result:*" $prefix | quote }}
{{- range $rule := list "-@all" "+@connection" "+@read" "+@write" "+@stream" "+@pubsub" "+eval" "+evalsha" "+script|load" "+script|exists" "+time" "-@dangerous" }}
- {{ $rule | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with include "llm-batcher.redis.maxmemory" . }}
# A backlog fills memory: past this Redis refuses writes (the API answers 503 redis_full) instead
# of being OOM-killed; noeviction, since evicting a queue key would lose tasks.
- --maxmemory
- {{ . | quote }}
- --maxmemory-policy
- noeviction
{{- end }}
{{- with .Values.redis.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* redis.maxmemory, or 80% of the memory limit in bytes (the rest for the append-only file's
rewrite buffers, the client buffers and the allocator's own); empty without either. */}}
{{- define "llm-batcher.redis.maxmemory" -}}
{{- $redis := .Values.redis }}
{{- if $redis.maxmemory }}
{{- $redis.maxmemory }}
{{- else }}
{{- $limit := toString (dig "limits" "memory" "" ($redis.resources | default dict)) }}
{{- if $limit }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- $number := regexFind "^[0-9]+" $limit }}
{{- $unit := trimPrefix $number $limit }}
{{- if or (not $number) (not (hasKey $units $unit)) }}
{{- fail (printf "redis.resources.limits.memory %q: set redis.maxmemory (a memory limit in bytes or with k, M, G, Ki, Mi or Gi is read on its own)" $limit) }}
{{- end }}
{{- div (mul (int64 $number) (int64 (get $units $unit)) 8) 10 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Probes: `redis-cli ping`. Its password comes from the environment, not from its arguments
(REDISCLI_AUTH; VALKEYCLI_AUTH for the Valkey image). While Redis loads a large append-only
file, PING answers LOADING: alive, not yet ready. */}}
{{- define "llm-batcher.redis.probes" -}}
{{- $cli := printf "redis-cli -h 127.0.0.1 -p %d" (int .Values.redis.port) }}
{{- if include "llm-batcher.redisSecretName" . }}
{{- $cli = printf "REDISCLI_AUTH=\"$REDIS_PASSWORD\" VALKEYCLI_AUTH=\"$REDIS_PASSWORD\" %s" $cli }}
{{- end }}
{{- $alive := printf "%s ping | grep -Eq 'PONG|LOADING'" $cli }}
startupProbe:
  exec:
    command: ["sh", "-c", {{ $alive | toJson }}]
  periodSeconds: 2
  failureThreshold: 150
livenessProbe:
  exec:
    command: ["sh", "-c", {{ $alive | toJson }}]
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  exec:
    command: ["sh", "-c", {{ printf "%s ping | grep -q PONG" $cli | toJson }}]
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}
