{{/* Chart name, overridable. */}}
{{- define "execution-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: "<release>" when it already contains the chart name, else "<release>-<chart>". */}}
{{- define "execution-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "execution-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels on every object. */}}
{{- define "execution-operator.labels" -}}
helm.sh/chart: {{ include "execution-operator.chart" . }}
{{ include "execution-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: execution-operator
{{- end }}

{{/* Selector labels: immutable once installed, so only name and instance. */}}
{{- define "execution-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "execution-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "execution-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "execution-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Operator image reference: digest wins over tag; tag defaults to appVersion. */}}
{{- define "execution-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True when the prometheus-operator API is served (ServiceMonitor / PrometheusRule can be applied). */}}
{{- define "execution-operator.hasMonitoringApi" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{- end }}
{{- end }}

{{/* Name of the metrics Service; it is also the Prometheus job label under a ServiceMonitor. */}}
{{- define "execution-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "execution-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
