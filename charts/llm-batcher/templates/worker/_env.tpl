{{/* The worker's environment: the common settings, its own, the mock's (when it runs the mock)
and the user's extraEnv. */}}
{{- define "llm-batcher.worker.env" -}}
{{- $worker := .Values.worker }}
{{- include "llm-batcher.commonEnv" (dict "ctx" . "component" "worker") }}
{{ include "llm-batcher.settingsEnv" (dict "settings" (include "llm-batcher.worker.config" . | fromJson) "prefix" "LLMB_") | trim }}
- name: LLMB_TMP_DIR
  value: {{ $worker.tmpDir.path | quote }}
# The pod name: unique among live workers, and what `done` events and logs name.
- name: LLMB_WORKER_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if include "llm-batcher.runsMock" . }}
{{ include "llm-batcher.settingsEnv" (dict "settings" $worker.mock "prefix" "LLMB_MOCK_") | trim }}
{{- end }}
{{- with $worker.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}


{{/* The worker's settings, with drainS defaulting to batchTimeoutS (Helm drops a null value), so
that a scale-down lets the longest batch finish. A JSON object: include ... | fromJson. */}}
{{- define "llm-batcher.worker.config" -}}
{{- $config := .Values.worker.config }}
{{- merge (deepCopy $config) (dict "drainS" $config.batchTimeoutS) | toJson }}
{{- end }}
