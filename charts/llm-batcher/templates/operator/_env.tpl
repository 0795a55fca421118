{{/* The operator's environment: Redis as the workers reach it (their ACL user: the operator
works on their consumer group), the common settings, its own, and what the chart knows. */}}
{{- define "llm-batcher.operator.env" -}}
{{- $operator := .Values.operator }}
{{- include "llm-batcher.commonEnv" (dict "ctx" . "component" "worker") }}
{{ include "llm-batcher.settingsEnv" (dict "settings" $operator.config "prefix" "LLMB_") | trim }}
# Only this namespace is watched; the worker pods are this release's.
- name: LLMB_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- $pairs := list }}
{{- range $name, $value := include "llm-batcher.selectorLabels" (dict "ctx" . "component" "worker") | fromYaml }}
{{- $pairs = append $pairs (printf "%s=%s" $name $value) }}
{{- end }}
- name: LLMB_WORKER_SELECTOR
  value: {{ join "," $pairs | quote }}
- name: LLMB_WORKER_DEPLOYMENT
  value: {{ printf "%s-worker" (include "llm-batcher.fullname" .) | quote }}
{{- with $operator.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
